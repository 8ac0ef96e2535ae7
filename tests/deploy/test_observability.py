"""The operator views in deploy/observability (alert rules, their promtool unit tests, the
Grafana dashboard, the scrape configuration) read only metrics Darkroom exports, and every
Darkroom pod serves /metrics where they look for it.

`python -m tests.deploy.test_observability` rewrites deploy/k8s/monitoring's
PrometheusRule from alerts.yaml (the test below fails while the two differ)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from darkroom.metrics import REGISTRY
from tests.deploy.manifests import (
    DEPLOY,
    KUBECTL,
    Obj,
    check_jsonschema,
    component,
    containers,
    env_of,
    named,
    of_kind,
    port_of,
    render_with,
    settings,
)
from tests.deploy.promql import exported, metric_names, series

OBSERVABILITY = DEPLOY / "observability"
ALERTS = OBSERVABILITY / "prometheus" / "alerts.yaml"
ALERT_TESTS = OBSERVABILITY / "prometheus" / "alerts.test.yaml"
SCRAPE = OBSERVABILITY / "prometheus" / "scrape.yaml"
DASHBOARD = OBSERVABILITY / "grafana" / "darkroom.json"
PROMETHEUS_RULE = DEPLOY / "k8s" / "monitoring" / "prometheusrule.yaml"
PROMETHEUS_RULE_SCHEMA = DEPLOY / "schemas" / "prometheus-operator" / "prometheusrule-v1.json"
METRICS_PORT = 9464
# Every long-running Darkroom process; the migrate Job exits and serves no metrics.
SERVING = {"jobs", "events", "reconciler", "generator", "gateway", "webhooks"}
# Grafana's variables, as a query would see them, so that promtool can parse the targets.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "$namespace": "darkroom"}
PROMTOOL = shutil.which("promtool")


def alert_rules() -> list[Obj]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> Obj:
    loaded: Obj = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: Obj) -> list[Obj]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return found


def dashboard_queries(board: Obj) -> dict[str, str]:
    """Every PromQL query of the dashboard, by where it is (panel title/refId, variable)."""
    queries = {
        f"{panel['title']}/{target['refId']}": target["expr"]
        for panel in panels(board)
        for target in panel.get("targets", [])
    }
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries[f"${variable['name']}"] = query["query"] if isinstance(query, dict) else query
    return queries


def promql(query: str) -> str:
    """A dashboard query as Prometheus gets it (label_values(m, l) reads series m)."""
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
    return match.group(1) if match else query


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        if os.environ.get("DARKROOM_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not on PATH and DARKROOM_REQUIRE_PROMTOOL=1")
        pytest.skip("promtool is not on PATH (apt-get install prometheus); the parser tests ran")
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, check=False, timeout=120
    )


def prometheus_rule() -> str:
    """deploy/k8s/monitoring/prometheusrule.yaml as generated from alerts.yaml."""
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "darkroom",
            # What kube-prometheus-stack's default ruleSelector matches.
            "labels": {"app.kubernetes.io/name": "darkroom", "release": "kube-prometheus-stack"},
        },
        "spec": yaml.safe_load(ALERTS.read_text()),
    }
    head = (
        "# Generated from deploy/observability/prometheus/alerts.yaml: edit that file, then\n"
        "#   .venv/bin/python -m tests.deploy.test_observability\n"
        "# rewrites this one (tests/deploy fails while they differ). The release label is what\n"
        "# kube-prometheus-stack's default ruleSelector matches: change it to your Prometheus's.\n"
    )
    return head + yaml.safe_dump(rule, sort_keys=False, width=100)


# -- alert rules ----------------------------------------------------------------------


def test_every_alert_has_a_duration_severity_and_what_to_do() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names), "alert names are unique"
    readme = (DEPLOY / "README.md").read_text()
    for rule in rules:
        name = rule["alert"]
        assert {"alert", "expr", "for", "labels", "annotations"} <= rule.keys(), name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), name
        anchor = f"runbook-{name.lower()}"
        assert f"deploy/README.md#{anchor}" in rule["annotations"]["runbook"], name
        assert f"Runbook: {name}" in readme, f"deploy/README.md has no section for {name}"


def test_the_alerts_the_issue_asks_for_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    reads = {name: metric_names(expr) for name, expr in exprs.items()}
    wanted = {
        "darkroom_queue_oldest_due_age_seconds",
        "darkroom_generator_busy",
        "darkroom_jobs_finished_total",
        "darkroom_events_delivery_lag_seconds_bucket",
        "darkroom_queue_read_timestamp_seconds",
        "darkroom_generator_heartbeat_age_seconds",
    }
    assert wanted <= set().union(*reads.values())
    assert "darkroom_queue_due_jobs" in reads["DarkroomNoGeneratorForQueuedWork"]
    assert "unless" in exprs["DarkroomNoGeneratorForQueuedWork"]


@pytest.mark.parametrize("where", ["alerts", "dashboard"])
def test_queries_read_only_metrics_darkroom_exports(where: str) -> None:
    """Fails when a metric is renamed in darkroom/metrics.py but not here (or misspelt)."""
    known = exported(REGISTRY)
    if where == "alerts":
        queries = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    else:
        queries = {name: promql(query) for name, query in dashboard_queries(dashboard()).items()}
    unknown = {
        name: sorted(metric_names(query) - known)
        for name, query in queries.items()
        if metric_names(query) - known
    }
    assert not unknown, f"not exported by darkroom.metrics.REGISTRY: {unknown}"
    assert all(metric_names(query) for query in queries.values()), "every query reads a metric"


def test_the_metric_name_parser_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model=~"x|y"}[5m]))) > 1e3'
        " unless on (model) count by (model) (b) > 0 or absent(c) and time() - d offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    known = exported(REGISTRY)
    assert {"darkroom_jobs_finished_total", "darkroom_job_run_seconds_bucket"} <= known
    assert "darkroom_jobs_finished" not in known, "counters are read with _total"


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fire_the_alerts() -> None:
    tested = {
        item["alertname"]
        for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for item in case.get("alert_rule_test", [])
    }
    assert {"DarkroomOldestDueJobTooOld", "DarkroomNoGeneratorForQueuedWork"} <= tested
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    queries = dashboard_queries(dashboard())
    rules = [
        {"record": f"darkroom:dashboard:query{index}", "expr": promql(query)}
        for index, query in enumerate(queries.values())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_prometheus_rule_is_alerts_yaml_and_valid(tmp_path: Path) -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule(), (
        "deploy/k8s/monitoring/prometheusrule.yaml differs from alerts.yaml: run "
        ".venv/bin/python -m tests.deploy.test_observability"
    )
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    result = check_jsonschema(PROMETHEUS_RULE_SCHEMA, [rule], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = {**rule, "spec": {"groups": [{"name": "x", "rules": [{"alert": "x", "exr": "1"}]}]}}
    assert check_jsonschema(PROMETHEUS_RULE_SCHEMA, [bad], tmp_path).returncode != 0


def test_the_monitoring_component_adds_the_rule_to_an_overlay(tmp_path: Path) -> None:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    objects = render_with("gke", ["monitoring"], tmp_path)
    rule = named(objects, "PrometheusRule", "darkroom")
    assert rule["metadata"]["namespace"] == "darkroom"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


# -- dashboard ------------------------------------------------------------------------


def test_dashboard_has_the_views_and_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert promql(variables["model"]["query"]["query"]) == "darkroom_queue_queued_jobs"
    everything = panels(board)
    ids = [panel["id"] for panel in everything]
    assert len(set(ids)) == len(ids), "panel ids are unique"
    rows = [panel["title"] for panel in everything if panel["type"] == "row"]
    assert {"Queue", "Workers", "Jobs", "gRPC", "Events", "Reconciler", "Gateway"} <= set(rows)
    for panel in everything:
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", title
        assert panel["targets"], f"{title}: no query"
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["refId"], title
            assert target["datasource"]["uid"] == "${datasource}", title


def test_every_darkroom_family_has_a_panel() -> None:
    """A new metric in darkroom/metrics.py needs a view (or a deliberate exception here)."""
    read = set().union(*(metric_names(promql(q)) for q in dashboard_queries(dashboard()).values()))
    missing = []
    for family in REGISTRY.collect():
        if not family.name.startswith(("darkroom_", "grpc_server_")):
            continue
        if not series(family.name, family.type) & read:
            missing.append(family.name)
    assert not missing, f"families without a dashboard panel: {missing}"


# -- manifests ------------------------------------------------------------------------


def serving(objects: list[Obj]) -> list[Obj]:
    found = [obj for obj in of_kind(objects, "Deployment") if component(obj) in SERVING]
    assert {component(obj) for obj in found} == SERVING, "a Deployment per Darkroom process"
    return found


def test_every_darkroom_process_serves_metrics_where_prometheus_looks(objects: list[Obj]) -> None:
    for deployment in serving(objects):
        name = deployment["metadata"]["name"]
        main = next(containers(deployment, init=False))
        assert port_of(env_of(objects, main)["DARKROOM_METRICS_ADDRESS"]) == METRICS_PORT, name
        assert env_of(objects, main)["DARKROOM_METRICS_ADDRESS"].startswith("0.0.0.0:"), name
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports.get("metrics") == METRICS_PORT, name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(METRICS_PORT),
            "prometheus.io/path": "/metrics",
        }, name


def test_monitoring_may_scrape_and_only_the_metrics_port(objects: list[Obj]) -> None:
    scrapes = [
        p for p in of_kind(objects, "NetworkPolicy")
        if any(q["port"] == METRICS_PORT for r in p["spec"].get("ingress", []) for q in r["ports"])
    ]  # fmt: skip
    (policy,) = scrapes
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "darkroom"}}
    (rule,) = policy["spec"]["ingress"]
    assert [q["port"] for q in rule["ports"]] == [METRICS_PORT]
    (peer,) = rule["from"]
    (expression,) = peer["namespaceSelector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name"
    assert "monitoring" in expression["values"]
    assert "podSelector" not in peer or peer["podSelector"]


def test_traces_are_off_and_documented(objects: list[Obj]) -> None:
    config = settings(objects)
    assert config["DARKROOM_TRACES_ENDPOINT"] == ""
    assert "DARKROOM_TRACES_SAMPLE_RATIO" in (DEPLOY / "k8s/base/settings.yaml").read_text()


def test_the_scrape_config_finds_the_pods_metrics_port(objects: list[Obj]) -> None:
    config: dict[str, Any] = yaml.safe_load(SCRAPE.read_text())
    assert config["rule_files"] == ["alerts.yaml"]
    (job,) = config["scrape_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod"
    namespaces = {obj["metadata"]["namespace"] for obj in serving(objects)}
    assert discovery["namespaces"]["names"] == sorted(namespaces)
    relabel = {tuple(r["source_labels"]): r for r in job["relabel_configs"]}
    keep = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert (keep["action"], keep["regex"]) == ("keep", "true")
    port = relabel[("__meta_kubernetes_pod_container_port_name",)]
    assert (port["action"], port["regex"]) == ("keep", "metrics")
    # The component label becomes the series' `component` label.
    component_label = relabel[("__meta_kubernetes_pod_label_app_kubernetes_io_component",)]
    assert component_label["target_label"] == "component"
    assert all(component(obj) for obj in serving(objects))


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(prometheus_rule())
    print(f"wrote {PROMETHEUS_RULE.relative_to(DEPLOY.parent)}")
