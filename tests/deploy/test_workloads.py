"""Properties of the rendered workloads that a schema cannot see: hardening, resources,
probes on the right ports, shutdown graces, GPU generators each with its own KEDA scaler,
Secret references that resolve, and settings every process knows."""

from __future__ import annotations

import inspect
import re

import pytest

from darkroom.config import Settings
from darkroom.server import check_exposure, is_loopback
from darkroom_client import defaults
from tests.deploy.manifests import (
    WORKLOADS,
    Obj,
    component,
    containers,
    env_of,
    models,
    named,
    of_kind,
    pod_spec,
    port_of,
    secret_data,
    settings,
)

METRICS_PORT = 9464
# Not server settings but the Python client's (darkroom_client.defaults), which the
# gateway's upstream client reads: TLS to Jobs and Events.
CLIENT_VARIABLES = {
    "DARKROOM_TLS", "DARKROOM_TLS_CA_FILE", "DARKROOM_TLS_CLIENT_CERT_FILE",
    "DARKROOM_TLS_CLIENT_KEY_FILE",
}  # fmt: skip


def workloads(objects: list[Obj]) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] in WORKLOADS]


def generators(objects: list[Obj]) -> list[Obj]:
    found = [obj for obj in of_kind(objects, "Deployment") if component(obj) == "generator"]
    assert found, "no generator Deployment"
    return found


def test_every_container_is_non_root_hardened_and_sized(objects: list[Obj]) -> None:
    problems = []
    for workload in workloads(objects):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = pod_spec(workload).get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or not pod.get("runAsUser"):
            problems.append(f"{name}: pod must set runAsNonRoot and a non-zero runAsUser")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile must be RuntimeDefault")
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            security = container.get("securityContext", {})
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: must drop ALL capabilities")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem must be read-only")
            if security.get("runAsUser", 1) == 0:
                problems.append(f"{where}: runs as root")
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            if not {"cpu", "memory"} <= requests.keys() or "memory" not in limits:
                problems.append(f"{where}: needs cpu+memory requests and a memory limit")
            if security.get("readOnlyRootFilesystem") and container["image"].startswith("darkroom"):
                mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
                if "/tmp" not in mounts:  # noqa: S108 - a mount path, not a temp file
                    problems.append(f"{where}: read-only root needs a writable /tmp")
    assert not problems, "\n".join(problems)


def test_our_pods_run_as_the_images_user(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        if all(c["image"].split("/")[-1].startswith("darkroom") for c in containers(workload)):
            assert pod_spec(workload)["securityContext"]["runAsUser"] == 10001


def test_each_generator_has_a_gpu_and_a_scaler_for_its_model(objects: list[Obj]) -> None:
    served = set()
    scaled = {
        obj["spec"]["scaleTargetRef"]["name"]: obj for obj in of_kind(objects, "ScaledObject")
    }
    auths = {obj["metadata"]["name"] for obj in of_kind(objects, "TriggerAuthentication")}
    for deployment in generators(objects):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        main = spec["containers"][0]
        assert main["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert "cloud.google.com/gke-accelerator" in spec["nodeSelector"], name
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), name
        env = env_of(objects, main)
        model = env["DARKROOM_GENERATOR_MODEL"]
        assert model in models(objects), f"{name} serves {model}, not in DARKROOM_MODELS"
        assert env["DARKROOM_GENERATOR_MODEL_PATH"].startswith("/models/")
        assert any(m["mountPath"] == "/models" for m in main["volumeMounts"])
        assert spec.get("initContainers"), f"{name}: no init container fills the model volume"
        served.add(model)

        scaler = scaled.pop(name, None)
        assert scaler is not None, f"no ScaledObject targets {name}"
        assert scaler["spec"]["minReplicaCount"] == 0
        assert scaler["spec"]["maxReplicaCount"] >= 1
        assert {"pollingInterval", "cooldownPeriod"} <= scaler["spec"].keys()
        (trigger,) = scaler["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        assert trigger["authenticationRef"]["name"] in auths
        meta = trigger["metadata"]
        assert meta["targetQueryValue"] == "1"
        assert meta["activationTargetQueryValue"] == "0"
        query = " ".join(meta["query"].split())
        assert re.search(rf"\bFROM jobs WHERE model = '{re.escape(model)}' AND", query), query
        assert "state = 'QUEUED' AND run_after <= now()" in query
        assert "state = 'RUNNING'" in query
    assert not scaled, f"ScaledObjects without a generator: {sorted(scaled)}"
    assert served == set(models(objects)), "every model needs its own generator"


def test_generators_probe_their_http_health_port(objects: list[Obj]) -> None:
    for deployment in generators(objects):
        main = pod_spec(deployment)["containers"][0]
        port = port_of(env_of(objects, main)["DARKROOM_GENERATOR_HEALTH_ADDRESS"])
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            http = main[probe]["httpGet"]
            assert http["path"] == path
            assert ports.get(http["port"], http["port"]) == port


@pytest.mark.parametrize(("service", "api_port"), [("jobs", 50051), ("events", 50052)])
def test_servers_have_grpc_probes_on_their_health_port(
    objects: list[Obj], service: str, api_port: int
) -> None:
    deployment = named(objects, "Deployment", f"darkroom-{service}")
    main = pod_spec(deployment)["containers"][0]
    env = env_of(objects, main)
    health = port_of(env[f"DARKROOM_{service.upper()}_HEALTH_ADDRESS"])
    assert port_of(env[f"DARKROOM_{service.upper()}_ADDRESS"]) == api_port
    assert health != api_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"]["port"] == health, probe
    assert {p["containerPort"] for p in main["ports"]} == {api_port, health, METRICS_PORT}
    service_obj = named(objects, "Service", f"darkroom-{service}")
    assert [p["port"] for p in service_obj["spec"]["ports"]] == [api_port]


def test_the_gateway_calls_the_services_and_is_probed_on_its_port(
    objects: list[Obj], overlay: str
) -> None:
    deployment = named(objects, "Deployment", "darkroom-gateway")
    (main,) = containers(deployment, init=False)
    env = env_of(objects, main)
    listen = port_of(env["DARKROOM_GATEWAY_ADDRESS"])
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert set(ports.values()) == {listen, METRICS_PORT}
    scheme = "HTTPS" if overlay == "gke" else "HTTP"  # gke serves TLS, dev plaintext
    for probe in ("readinessProbe", "livenessProbe"):
        http = main[probe]["httpGet"]
        assert http["path"] == "/healthz"
        assert ports.get(http["port"]) == listen
        assert http["scheme"] == scheme
    service = named(objects, "Service", "darkroom-gateway")
    assert [p["port"] for p in service["spec"]["ports"]] == [listen]
    for target, api in (("JOBS", "jobs"), ("EVENTS", "events")):
        host, _, port = env[f"DARKROOM_GATEWAY_{target}_TARGET"].rpartition(":")
        upstream = named(objects, "Service", host)
        assert component(upstream) == api
        assert [p["port"] for p in upstream["spec"]["ports"]] == [int(port)]
    if overlay == "gke":
        assert env["DARKROOM_TLS"] == "1", "TLS to Jobs and Events"


def test_reconciler_has_no_probes(objects: list[Obj]) -> None:
    main = pod_spec(named(objects, "Deployment", "darkroom-reconciler"))["containers"][0]
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & main.keys()


def test_termination_grace_covers_prestop_and_shutdown_grace(objects: list[Obj]) -> None:
    for deployment in of_kind(objects, "Deployment"):
        if not component(deployment):
            continue  # the dev overlay's Redis
        spec = pod_spec(deployment)
        main = spec["containers"][0]
        grace = float(env_of(objects, main)["DARKROOM_SHUTDOWN_GRACE"])
        pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        sleep = float(pre_stop[1]) if pre_stop and pre_stop[0] == "sleep" else 0.0
        if component(deployment) in {"jobs", "events", "gateway", "generator"}:
            assert sleep > 0, (
                f"{deployment['metadata']['name']}: preStop sleep lets endpoints drain"
            )
        assert spec["terminationGracePeriodSeconds"] > grace + sleep, deployment["metadata"]
    for deployment in generators(objects):
        main = pod_spec(deployment)["containers"][0]
        assert float(env_of(objects, main)["DARKROOM_SHUTDOWN_GRACE"]) >= 600


def test_every_referenced_secret_and_key_exists(objects: list[Obj]) -> None:
    secrets = {obj["metadata"]["name"]: secret_data(obj) for obj in of_kind(objects, "Secret")}
    config_maps = {obj["metadata"]["name"] for obj in of_kind(objects, "ConfigMap")}
    missing = []
    for workload in workloads(objects):
        for container in containers(workload):
            for source in container.get("envFrom", []):
                if "secretRef" in source and source["secretRef"]["name"] not in secrets:
                    missing.append(f"secret {source['secretRef']['name']}")
                if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps:
                    missing.append(f"configmap {source['configMapRef']['name']}")
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get(ref["name"], {}):
                    missing.append(f"secret {ref['name']} key {ref['key']}")
        for volume in pod_spec(workload).get("volumes", []):
            ref = volume.get("secret")
            if ref and not ref.get("optional") and ref["secretName"] not in secrets:
                missing.append(f"secret volume {ref['secretName']}")
    for auth in of_kind(objects, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            if ref["key"] not in secrets.get(ref["name"], {}):
                missing.append(f"secret {ref['name']} key {ref['key']} (KEDA)")
    assert not missing, missing
    assert {"DARKROOM_AUTH_TOKENS", "DARKROOM_DATABASE_URL", "DARKROOM_REDIS_URL"} <= secrets[
        "darkroom-secrets"
    ].keys()


def test_every_darkroom_variable_is_a_setting(objects: list[Obj]) -> None:
    known = {f"DARKROOM_{name.upper()}" for name in Settings.model_fields}
    client = inspect.getsource(defaults.credentials_from_env)
    assert all(f'"{name}"' in client for name in CLIENT_VARIABLES), "the client reads them"
    known |= CLIENT_VARIABLES
    names = set(settings(objects))
    for secret in of_kind(objects, "Secret"):
        names |= secret_data(secret).keys()
    for workload in workloads(objects):
        for container in containers(workload):
            names |= {item["name"] for item in container.get("env", [])}
    unknown = {n for n in names if n.startswith("DARKROOM_")} - known
    assert not unknown, f"not settings of darkroom.config (typo?): {sorted(unknown)}"


def test_migrations_run_as_a_job_and_before_jobs(objects: list[Obj]) -> None:
    job = named(objects, "Job", "darkroom-migrate")
    assert pod_spec(job)["containers"][0]["command"] == ["darkroom-migrate"]
    init = pod_spec(named(objects, "Deployment", "darkroom-jobs"))["initContainers"]
    assert [c["command"] for c in init] == [["darkroom-migrate"]]


def test_autoscaling_and_disruption_budgets(objects: list[Obj]) -> None:
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")
    }
    for service in ("jobs", "events"):
        hpa = hpas[f"darkroom-{service}"]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert hpa["spec"]["minReplicas"] >= 2
    budgets = [
        p["spec"]["selector"]["matchLabels"] for p in of_kind(objects, "PodDisruptionBudget")
    ]
    for deployment in [
        named(objects, "Deployment", "darkroom-jobs"),
        named(objects, "Deployment", "darkroom-events"),
        named(objects, "Deployment", "darkroom-gateway"),
        *generators(objects),
    ]:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(b.items() <= labels.items() for b in budgets), deployment["metadata"]["name"]
    assert not any(g["metadata"]["name"] in hpas for g in generators(objects)), "KEDA owns them"


def test_api_ports_have_ingress_policies(objects: list[Obj]) -> None:
    policies = of_kind(objects, "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
               for p in policies), "default-deny ingress"  # fmt: skip
    for service, port in (("jobs", 50051), ("events", 50052), ("gateway", 8443)):
        selected = [
            p for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
            == service
        ]  # fmt: skip
        ports = {
            q["port"] for p in selected for rule in p["spec"]["ingress"] for q in rule["ports"]
        }
        assert ports == {port}, service


def test_gke_is_tls_only_and_uses_google_services(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["gke"]
    for workload in workloads(objects):
        for container in containers(workload):
            assert "DARKROOM_ALLOW_INSECURE" not in env_of(objects, container)
    config = settings(objects)
    assert "DARKROOM_ALLOW_INSECURE" not in config
    assert config["DARKROOM_TLS_CERT_FILE"]
    assert config["DARKROOM_TLS_KEY_FILE"]
    assert config["DARKROOM_STORAGE_URL"].startswith("gs://")
    assert named(objects, "Secret", "darkroom-tls")["type"] == "kubernetes.io/tls"
    for service in ("jobs", "events"):
        volumes = pod_spec(named(objects, "Deployment", f"darkroom-{service}"))["volumes"]
        tls = next(v for v in volumes if v["name"] == "tls")
        assert tls["secret"] == {"secretName": "darkroom-tls", "optional": False}
    account = named(objects, "ServiceAccount", "darkroom")
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]
    urls = secret_data(named(objects, "Secret", "darkroom-secrets"))
    assert "REPLACE_ME" in urls["DARKROOM_DATABASE_URL"], "placeholders only in git"
    assert not of_kind(objects, "StatefulSet"), "gke uses Cloud SQL, not an in-cluster database"


def test_dev_runs_plaintext_with_its_own_stores(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["dev"]
    config = settings(objects)
    assert config["DARKROOM_ALLOW_INSECURE"] == "true"
    assert config["DARKROOM_TLS_CERT_FILE"] == ""
    named(objects, "StatefulSet", "darkroom-postgres")
    named(objects, "Deployment", "darkroom-redis")
    for deployment in [*generators(objects), named(objects, "Deployment", "darkroom-jobs")]:
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == "darkroom-storage"
    allowed = {"jobs", "events", "reconciler", "generator"}
    postgres_only = {"webhooks"}  # the delivery workers need Postgres, never Redis
    for store, port in (("darkroom-postgres", 5432), ("darkroom-redis", 6379)):
        (policy,) = [
            p for p in of_kind(objects, "NetworkPolicy")
            if p["spec"]["podSelector"].get("matchLabels") == {"app.kubernetes.io/name": store}
        ]  # fmt: skip
        (rule,) = policy["spec"]["ingress"]
        assert [q["port"] for q in rule["ports"]] == [port]
        peers = rule["from"]
        ours = [p for p in peers if "namespaceSelector" not in p]
        (expression,) = ours[0]["podSelector"]["matchExpressions"]
        assert allowed <= set(expression["values"])
        if store == "darkroom-postgres":
            assert postgres_only <= set(expression["values"])
        else:
            assert not postgres_only & set(expression["values"])
        assert all("namespaceSelector" not in p or p["podSelector"] for p in peers)


def test_the_dev_servers_would_start_with_their_settings(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings the dev overlay gives Jobs, Events and the gateway pass the servers'
    own start checks (a non-loopback address refuses the development token and bare
    plaintext; the gateway also needs a session secret there)."""
    objects = rendered["dev"]
    secrets = secret_data(named(objects, "Secret", "darkroom-secrets"))
    for name, address_setting in (
        ("darkroom-jobs", "jobs_address"),
        ("darkroom-events", "events_address"),
        ("darkroom-gateway", "gateway_address"),
    ):
        (server,) = containers(named(objects, "Deployment", name), init=False)
        for variable, value in {**env_of(objects, server), **secrets}.items():
            monkeypatch.setenv(variable, value)
        loaded = Settings()
        address = getattr(loaded, address_setting)
        assert not is_loopback(address)
        check_exposure(address, loaded)
        if address_setting == "gateway_address":
            assert loaded.gateway_session_secret
        for variable in {**env_of(objects, server), **secrets}:
            monkeypatch.delenv(variable)
