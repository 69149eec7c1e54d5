"""deploy/ and k8s/ checked offline with the tools operators use, and against a running edge.

- every kustomize overlay builds (``kubectl kustomize``) and each resource validates
  strictly against the Kubernetes schemas that ``kubernetes-validate`` ships (no network);
  the Prometheus Operator resources, which it has no schema for, are checked by hand and
  their rules by ``promtool``;
- ``promtool check config`` / ``check rules`` on the Prometheus files, and
  ``promtool test rules`` (``deploy/prometheus/rules_test.yml``) on the alerts;
- ``docker-compose config`` on the compose file (the compose-spec schema, no daemon);
- the generated Grafana dashboard and PrometheusRule are what their scripts write now;
- every metric the dashboard and the alert rules name is in a running edge's ``/metrics``;
- the drain timings agree: terminationGracePeriodSeconds covers preStop + drain grace +
  the teardown wait; compose's stop_grace_period likewise;
- the configuration files the deployments mount pass ``check-config``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from telephony_edge.calls.manager import TEARDOWN_WAIT_S
from telephony_edge.config import load_settings
from tests.conftest import missing_peer, require_binary, run_cli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"
OVERLAYS = ("us-west", "eu-west", "dev")
KUBERNETES_VERSION = "1.30.0"  # the oldest minor the manifests are written for
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
METRIC = re.compile(r"\btelephony_edge_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd
    )
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout}\n{done.stderr}"
    return done


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = require_binary("kubectl", "kubectl with kustomize >= 5 (the machine's kubectl)")
    built = run(kubectl, "kustomize", K8S / "overlays" / overlay).stdout
    return [doc for doc in yaml.safe_load_all(built) if doc]


def of_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The edge's one resource of ``kind`` (a generated ConfigMap's name has a hash suffix)."""
    edge = re.compile(r"telephony-edge(-config-[a-z0-9]+)?")
    [found] = [r for r in resources if r["kind"] == kind and edge.fullmatch(r["metadata"]["name"])]
    return found


# -- Kubernetes ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_builds_and_validates_strictly(overlay: str) -> None:
    try:
        from kubernetes_validate import utils as kv
    except ImportError:
        missing_peer("kubernetes-validate", "pip install kubernetes-validate")
    resources = kustomize(overlay)
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "ConfigMap", "ServiceMonitor", "PrometheusRule"} <= kinds
    for resource in resources:
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # no schema shipped: checked in the tests below
        kv.validate(resource, KUBERNETES_VERSION, strict=True)
    assert all(r["metadata"].get("namespace") == f"telephony-edge-{overlay}" for r in resources)


def test_a_schema_error_is_caught() -> None:
    """The validator is not a no-op: a misspelt field fails."""
    try:
        from kubernetes_validate import utils as kv
    except ImportError:
        missing_peer("kubernetes-validate", "pip install kubernetes-validate")
    deployment = of_kind(kustomize("dev"), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 50
    with pytest.raises(kv.ValidationError, match="terminationGracePeriod"):
        kv.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ("us-west", "eu-west"))
def test_region_overlays_wire_region_sip_and_the_node_address(overlay: str) -> None:
    resources = kustomize(overlay)
    pod = of_kind(resources, "Deployment")["spec"]["template"]
    [edge] = pod["spec"]["containers"]
    env = {e["name"]: e for e in edge["env"]}
    assert env["TELEPHONY_EDGE_SERVER__REGION"]["value"] == overlay
    assert (
        env["TELEPHONY_EDGE_SERVER__PUBLIC_URL"]["value"] == f"https://{overlay}.edge.example.com"
    )
    advertised = env["TELEPHONY_EDGE_SIP__ADVERTISED_HOST"]["valueFrom"]["fieldRef"]
    assert advertised["fieldPath"] == "status.hostIP"
    assert pod["spec"]["hostNetwork"] is True
    assert pod["metadata"]["labels"]["topology.telephony-edge.io/region"] == overlay
    # every variable names a real setting (check-config refuses unknown ones)
    values = {name: e.get("value", "secret-from-the-secret-0001") for name, e in env.items()}
    values["TELEPHONY_EDGE_COORDINATION__REDIS_URL"] = "redis://redis:6379/0"
    values["TELEPHONY_EDGE_SIP__ADVERTISED_HOST"] = "203.0.113.7"
    values.pop("TELEPHONY_EDGE_SERVER__WORKER_ID")
    config = yaml.safe_load(of_kind(resources, "ConfigMap")["data"]["config.yaml"]) or {}
    checked = check_config(config, values)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def check_config(config: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    try:
        return subprocess.run(
            [sys.executable, "-m", "telephony_edge", "check-config", f.name],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
    finally:
        os.unlink(f.name)


def test_pods_are_locked_down_and_probe_health_and_readiness() -> None:
    pod = of_kind(kustomize("us-west"), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [edge] = pod["containers"]
    security = edge["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["allowPrivilegeEscalation"] is False
    assert edge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert edge["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_termination_grace_covers_prestop_drain_and_teardown() -> None:
    resources = kustomize("us-west")
    pod = of_kind(resources, "Deployment")["spec"]["template"]["spec"]
    [edge] = pod["containers"]
    command = edge["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    config = yaml.safe_load((K8S / "base" / "config.yaml").read_text())
    needed = float(command[1]) + config["server"]["drain_grace_s"] + TEARDOWN_WAIT_S
    assert pod["terminationGracePeriodSeconds"] >= needed
    # compose: SIGTERM, then the drain grace and the teardown before the kill
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    edge_config = load_settings(DEPLOY / "edge.yaml")
    grace = compose["services"]["edge-1"]["stop_grace_period"]
    assert float(grace.removesuffix("s")) >= edge_config.server.drain_grace_s + TEARDOWN_WAIT_S


def test_servicemonitor_scrapes_the_service_port_and_labels_the_region() -> None:
    resources = kustomize("eu-west")
    monitor = of_kind(resources, "ServiceMonitor")
    service = of_kind(resources, "Service")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert any(r["targetLabel"] == "region" for r in endpoint["relabelings"])
    hpa = of_kind(resources, "HorizontalPodAutoscaler")
    [pods] = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] == "telephony_edge_calls_active"


def test_prometheusrule_is_the_rules_file_and_promtool_accepts_it(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    rule = of_kind(kustomize("us-west"), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    run(promtool, "check", "rules", extracted)
    run(sys.executable, K8S / "build_prometheusrule.py", "--check")


# -- Prometheus, compose, Grafana ------------------------------------------------------


def test_promtool_checks_the_config_and_rules(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    out = run(promtool, "check", "rules", RULES).stdout
    assert "SUCCESS" in out
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]  # where compose mounts it
    config["rule_files"] = [str(RULES)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    run(promtool, "check", "config", local)
    # the alerts fire where they should (all workers of a region draining, errors, Redis)
    assert "SUCCESS" in run(promtool, "test", "rules", "rules_test.yml", cwd=RULES.parent).stdout


def test_compose_file_is_valid() -> None:
    compose = require_binary("docker-compose", "apt-get install docker-compose")
    out = run(compose, "-f", DEPLOY / "compose.yaml", "config").stdout
    services = yaml.safe_load(out)["services"]
    assert {"edge-1", "edge-2", "agent-core", "redis", "caddy", "prometheus", "grafana"} <= set(
        services
    )
    assert services["agent-core"]["command"][0] == "agent-core"
    for name in ("edge-1", "edge-2"):
        env = services[name]["environment"]
        assert env["TELEPHONY_EDGE_AGENT_CORE__URL"] == "ws://agent-core:8765/agent"
        assert env["TELEPHONY_EDGE_COORDINATION__REDIS_URL"].startswith("redis://redis:")


def test_the_compose_edge_config_is_valid() -> None:
    """(k8s/base/config.yaml is checked with its pods' environment, per overlay, above.)"""
    done = run_cli("check-config", str(DEPLOY / "edge.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_what_the_script_writes_now() -> None:
    json.loads(DASHBOARD.read_text())
    done = subprocess.run(
        [sys.executable, DEPLOY / "grafana" / "build_dashboard.py", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# -- every metric named exists ------------------------------------------------------------


def named_metrics() -> Iterator[tuple[str, str]]:
    """(where, metric name) for every metric the dashboard and the alert rules query."""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            for name in METRIC.findall(target["expr"]):
                yield f"dashboard panel {panel['title']}", name
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name in METRIC.findall(rule["expr"]):
                yield f"alert {rule['alert']}", name


def test_every_metric_named_is_exported_by_a_running_edge(serve_process: Any) -> None:
    edge = serve_process(
        {"server": {"region": "r"}, "regions": {"r": {"public_url": "http://x.example"}}}
    )
    import urllib.request

    with urllib.request.urlopen(edge.base_url + "/metrics", timeout=5) as resp:
        exposition = resp.read().decode()
    families = {
        f.name: f.type
        for f in text_string_to_metric_families(exposition)
        if not f.name.endswith("_created")  # a counter's or histogram's start time
    }
    dashboard = json.loads(DASHBOARD.read_text())
    assert len(dashboard["panels"]) == len([n for n in families if n.startswith("telephony_edge_")])
    missing = []
    for where, name in named_metrics():
        if name in families:
            continue
        if name.endswith("_total") and families.get(name.removesuffix("_total")) == "counter":
            continue
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), "")
        if families.get(base) == "histogram":
            continue
        missing.append(f"{where}: {name}")
    assert not missing, "\n".join(missing)
    assert sum(1 for _ in named_metrics()) > 30
