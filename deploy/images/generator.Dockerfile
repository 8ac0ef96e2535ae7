# The generator (one per GPU): darkroom-server[generator] with a torch build pinned exactly.
#
#   docker build -f deploy/images/generator.Dockerfile \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#     --build-arg TORCH_VERSION=2.13.0 -t darkroom-generator .
#
# TORCH_VARIANT=cuda (the default) takes torch==TORCH_VERSION from TORCH_INDEX (its +cu128
# build; the nvidia-* libraries come from PyPI). TORCH_VARIANT=cpu ignores TORCH_INDEX and
# takes the plain pin torch==TORCH_VERSION from the default index or from local wheels in
# .wheels/ of the context (how deploy/image-smoke.sh builds it without a GPU).
#
# No model weights are baked in: the model is a folder mounted at
# DARKROOM_GENERATOR_MODEL_PATH (in Kubernetes, a volume an init container fills with a
# pinned revision; see deploy/k8s/base/generator-tiny-sd.yaml and deploy/README.md).
ARG BASE=python:3.11-slim-bookworm

# ---- builder: torch first (pinned), then wheels of everything else ----
FROM ${BASE} AS builder
ARG TORCH_VARIANT=cuda
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# PIP_CERT (optional): a CA bundle inside the context, for builds behind a TLS-inspecting
# proxy (deploy/image-smoke.sh passes the host's bundle as /src/.build-ca.pem).
ARG PIP_CERT=""
ENV PIP_CERT=${PIP_CERT}
WORKDIR /src
COPY . /src
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir pip==26.3
RUN set --; \
    if [ "${TORCH_VARIANT}" = cuda ]; then \
      set -- --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple; \
    elif [ "${TORCH_VARIANT}" != cpu ]; then \
      echo "TORCH_VARIANT must be cuda or cpu, not ${TORCH_VARIANT}" >&2; exit 2; \
    fi; \
    /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels --find-links /src/.wheels \
      "$@" "torch==${TORCH_VERSION}"
# The torch wheel in /wheels satisfies the server's own torch pin; a constraint keeps pip
# from trading it for another build of the same version.
RUN echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels \
      --find-links /wheels --find-links /src/.wheels --constraint /tmp/constraints.txt \
      ./protos ./clients/python ".[generator]" \
    && ls /wheels/torch-*.whl

# ---- venv: install the wheels (offline) into the venv the final stage copies ----
FROM ${BASE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=builder /wheels /wheels
RUN python3 -m venv /opt/darkroom \
    && /opt/darkroom/bin/pip install --no-cache-dir --no-index /wheels/*.whl \
    && /opt/darkroom/bin/pip uninstall --yes pip

# ---- runtime ----
FROM ${BASE}
RUN groupadd --gid 10001 darkroom \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin darkroom
COPY --from=venv /opt/darkroom /opt/darkroom
# HF_HUB_OFFLINE: the model comes from the mounted folder, never from the network at start.
ENV PATH=/opt/darkroom/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_VERBOSITY=error \
    DARKROOM_LOG_JSON=true \
    DARKROOM_GENERATOR_MODEL_PATH=/models/tiny-sd \
    DARKROOM_GENERATOR_HEALTH_ADDRESS=0.0.0.0:8080
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
CMD ["darkroom-generator"]
