"""Rendering the kustomize overlays in deploy/k8s and reading the objects they produce."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
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
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")

Obj = dict[str, Any]


def _copy(workdir: Path) -> Path:
    """A copy of deploy/k8s in `workdir`. The gke overlay reads secret files an operator
    fills in (git-ignored); the copy gets them from the committed `*.example` placeholders."""
    tree = workdir / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env", "*.crt", "*.key"))
    for example in tree.glob("*/secrets/*.example"):
        shutil.copyfile(example, example.with_suffix(""))
    return tree


def _kustomize(folder: Path) -> list[Obj]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(folder)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {folder.name} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render(overlay: str, workdir: Path) -> list[Obj]:
    """`kubectl kustomize` one overlay from a copy of deploy/k8s."""
    return _kustomize(_copy(workdir) / overlay)


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


def render_with(overlay: str, components: list[str], workdir: Path) -> list[Obj]:
    """`kubectl kustomize` of `overlay` with kustomize `components` (folders of deploy/k8s)
    added to its kustomization.yaml, as an operator adds them to theirs."""
    folder = _copy(workdir) / overlay
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    kustomization.setdefault("components", []).extend(f"../{name}" for name in components)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return _kustomize(folder)


def check_jsonschema(
    schema: Path, instances: list[Obj], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """`check-jsonschema` of `instances` (written to `workdir`) against `schema`."""
    files = []
    for index, instance in enumerate(instances):
        path = workdir / f"{instance['kind']}-{index}.json"
        path.write_text(json.dumps(instance))
        files.append(str(path))
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--schemafile", str(schema), *files],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
