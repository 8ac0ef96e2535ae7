"""Rendering the kustomize overlays in deploy/k8s and reading the objects they produce."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "gke")
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
KUBECTL = shutil.which("kubectl") or (
    "/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None
)
WORKLOADS = {"Deployment", "StatefulSet", "Job"}

Obj = dict[str, Any]


def render(overlay: str, workdir: Path) -> list[Obj]:
    """`kubectl kustomize` one overlay from a copy of deploy/k8s.

    The gke overlay reads secret files an operator fills in (git-ignored); the copy gets
    them from the committed `*.example` placeholders.
    """
    assert KUBECTL is not None
    tree = workdir / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env", "*.crt", "*.key"))
    for example in tree.glob("*/secrets/*.example"):
        shutil.copyfile(example, example.with_suffix(""))
    result = subprocess.run(
        [KUBECTL, "kustomize", str(tree / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj, *, init: bool = True) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec["containers"]
    if init:
        yield from spec.get("initContainers", [])


def component(obj: Obj) -> str:
    labels: dict[str, str] = obj["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component", "")


def settings(objects: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = named(objects, "ConfigMap", "darkroom-settings")["data"]
    return data


def secret_data(secret: Obj) -> dict[str, str]:
    """A Secret's keys, from data (kustomize's generators) or stringData (placeholders)."""
    data = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def env_of(objects: list[Obj], container: Obj) -> dict[str, str]:
    """A container's literal environment: its ConfigMaps, then its own `env` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def port_of(address: str) -> int:
    match = re.fullmatch(r".+:(\d+)", address)
    assert match, f"{address!r} is not host:port"
    return int(match.group(1))


def models(objects: list[Obj]) -> list[str]:
    names: list[str] = json.loads(settings(objects)["DARKROOM_MODELS"])
    return names
