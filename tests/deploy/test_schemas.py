"""Every rendered object is valid: built-in kinds against Kubernetes 1.32's strict schemas
(kubernetes-validate), KEDA's kinds against the strict schemas vendored in
deploy/schemas/keda (check-jsonschema)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.deploy.manifests import DEPLOY, KEDA_KINDS, Obj, check_jsonschema, of_kind

KUBERNETES_VERSION = "1.32.0"
SCHEMAS = {
    "ScaledObject": DEPLOY / "schemas" / "keda" / "scaledobject-v1alpha1.json",
    "TriggerAuthentication": DEPLOY / "schemas" / "keda" / "triggerauthentication-v1alpha1.json",
}


def test_overlay_renders_every_part(objects: list[Obj]) -> None:
    kinds = {obj["kind"] for obj in objects}
    expected = {
        "Namespace", "ServiceAccount", "ConfigMap", "Secret", "Job", "Deployment", "Service",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ScaledObject",
        "TriggerAuthentication",
    }  # fmt: skip
    assert expected <= kinds
    names = {obj["metadata"]["name"] for obj in of_kind(objects, "Deployment")}
    assert {
        "darkroom-jobs",
        "darkroom-events",
        "darkroom-reconciler",
        "darkroom-gateway",
        "darkroom-webhooks",
    } <= names
    assert all(
        obj["metadata"].get("namespace") == "darkroom"
        for obj in objects
        if obj["kind"] != "Namespace"
    )


def test_builtin_kinds_pass_strict_kubernetes_schemas(objects: list[Obj]) -> None:
    failures = []
    for obj in objects:
        if obj["kind"] in KEDA_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)


def test_strict_kubernetes_schemas_reject_an_unknown_field() -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "data": {},
        "dataa": {},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kind", sorted(KEDA_KINDS))
def test_keda_kinds_pass_the_vendored_strict_schemas(
    objects: list[Obj], kind: str, tmp_path: Path
) -> None:
    instances = of_kind(objects, kind)
    assert instances, f"no {kind} rendered"
    assert all(obj["apiVersion"] == "keda.sh/v1alpha1" for obj in instances)
    result = check_jsonschema(SCHEMAS[kind], instances, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vendored_keda_schema_rejects_an_unknown_field(tmp_path: Path) -> None:
    bad = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"name": "x"},
            "triggers": [{"type": "postgresql", "metadata": {}, "authRef": {"name": "x"}}],
        },
    }
    result = check_jsonschema(SCHEMAS["ScaledObject"], [bad], tmp_path)
    assert result.returncode != 0
