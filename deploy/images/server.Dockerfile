# The CPU services: Jobs, Events, the reconciler and the migrations (darkroom-migrate).
#
#   docker build -f deploy/images/server.Dockerfile -t darkroom-server .
#
# Build from the repository root. With BuildKit, server.Dockerfile.dockerignore (beside this
# file) keeps .venv, .darkroom, node_modules and caches out of the context; the legacy builder
# ignores it, so deploy/image-smoke.sh builds from a context of the files git knows instead.
# Pick the command per container: darkroom-jobs (the default), darkroom-events,
# darkroom-reconciler, darkroom-migrate.
ARG BASE=python:3.11-slim-bookworm

# ---- builder: wheels of the three distributions and of every dependency ----
FROM ${BASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# PIP_CERT (optional): a CA bundle inside the context, for builds behind a TLS-inspecting
# proxy (deploy/image-smoke.sh passes the host's bundle as /src/.build-ca.pem).
ARG PIP_CERT=""
ENV PIP_CERT=${PIP_CERT}
WORKDIR /src
COPY . /src
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir pip==26.3
# ./protos = darkroom-contract (generates darkroom.v1 at build time), ./clients/python =
# darkroom-client, . = darkroom-server. Local wheels in .wheels/ (optional) are preferred.
RUN /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels --find-links /src/.wheels \
      ./protos ./clients/python .

# ---- venv: install the wheels (offline) into the venv the final stage copies ----
FROM ${BASE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=builder /wheels /wheels
RUN python3 -m venv /opt/darkroom \
    && /opt/darkroom/bin/pip install --no-cache-dir --no-index /wheels/*.whl \
    && /opt/darkroom/bin/pip uninstall --yes pip

# ---- runtime: the venv, a non-root user, no build tools, no wheels ----
FROM ${BASE}
RUN groupadd --gid 10001 darkroom \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin darkroom
COPY --from=venv /opt/darkroom /opt/darkroom
# Read-only root filesystem friendly: nothing writes bytecode; HOME and caches are in /tmp
# (an emptyDir in Kubernetes).
ENV PATH=/opt/darkroom/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DARKROOM_LOG_JSON=true
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 50052 8081 8082
CMD ["darkroom-jobs"]
