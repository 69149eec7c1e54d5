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
- the drain timings agree: terminationGracePeriodSeconds is preStop + the drain's wait +
  the teardown wait + shut-down, written once in ``k8s/timings.py``; compose's
  stop_grace_period covers its drain; requests equal limits, sized from the scorecard;
  the HPA's headroom survives the PDB's disruption;
- SIP: no pod advertises ``status.hostIP``; each layout's address comes from its
  ConfigMap (per node, per pod); no pod serves the admin surface on a wildcard address;
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
from telephony_edge.config import DRAIN_MARGIN_S
from telephony_edge.config_loading import load_settings
from telephony_edge.sip.nat import is_private
from tests.conftest import missing_peer, require_binary, run_cli

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"
OVERLAYS = ("us-west", "eu-west", "us-east", "dev")
SIP_OVERLAYS = {"us-west": "hostnetwork", "eu-west": "hostnetwork", "us-east": "loadbalancer"}
WILDCARDS = ("0.0.0.0", "::", "")
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


def load_timings() -> Any:
    """``k8s/timings.py``, the one place of the drain and capacity arithmetic."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("k8s_timings", K8S / "timings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


timings = load_timings()


def workload(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The edge's Deployment (a StatefulSet where each SIP pod has its own balancer)."""
    found: dict[str, Any] = timings.workload(resources)
    return found


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
    assert {workload(resources)["kind"], "Service", "PodDisruptionBudget"} <= kinds
    # one balancer per pod fixes the size: no autoscaler there
    assert ("HorizontalPodAutoscaler" in kinds) == (SIP_OVERLAYS.get(overlay) != "loadbalancer")
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


@pytest.mark.parametrize("overlay", SIP_OVERLAYS)
def test_region_overlays_wire_region_sip_and_an_explicit_public_address(overlay: str) -> None:
    resources = kustomize(overlay)
    pod = workload(resources)["spec"]["template"]
    [edge] = pod["spec"]["containers"]
    env = {e["name"]: e for e in edge["env"]}
    assert env["TELEPHONY_EDGE_SERVER__REGION"]["value"] == overlay
    assert (
        env["TELEPHONY_EDGE_SERVER__PUBLIC_URL"]["value"] == f"https://{overlay}.edge.example.com"
    )
    assert pod["metadata"]["labels"]["topology.telephony-edge.io/region"] == overlay
    # the advertised address: never the node's own (private on EKS, GKE, AKS), but the
    # public one the operator wrote per node or per pod in the ConfigMap
    assert "status.hostIP" not in json.dumps(pod)
    assert "TELEPHONY_EDGE_SIP__ADVERTISED_HOST" not in env
    layout = SIP_OVERLAYS[overlay]
    key = {"hostnetwork": "NODE_NAME", "loadbalancer": "POD_NAME"}[layout]
    path = env["TELEPHONY_EDGE_SIP__ADVERTISED_HOST_FILE"]["value"]
    assert path == f"/etc/telephony-edge-sip/$({key})"
    field = {"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name"}[key]
    assert env[key]["valueFrom"]["fieldRef"]["fieldPath"] == field
    [mount] = [m for m in edge["volumeMounts"] if m["mountPath"] == "/etc/telephony-edge-sip"]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    addresses = of_named(resources, "ConfigMap", volume["configMap"]["name"])["data"]
    assert addresses and not any(is_private(a) for a in addresses.values())
    assert pod["spec"].get("hostNetwork", False) is (layout == "hostnetwork")
    if layout == "loadbalancer":
        replicas = workload(resources)["spec"]["replicas"]
        assert set(addresses) == {f"telephony-edge-{n}" for n in range(replicas)}
    # every variable names a real setting (check-config refuses unknown ones)
    config = yaml.safe_load(of_kind(resources, "ConfigMap")["data"]["config.yaml"]) or {}
    values = timings.pod_env(resources)
    values.pop("TELEPHONY_EDGE_SERVER__WORKER_ID")
    checked = check_config(config, values)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def of_named(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_serves_the_admin_surface_on_a_wildcard_address(overlay: str) -> None:
    """/metrics and /status (and the API when moved there) on the pod's own address; a pod
    on the host network binds even its main port to it, never to every node address."""
    resources = kustomize(overlay)
    settings = timings.pod_settings(resources)
    pod = workload(resources)["spec"]["template"]["spec"]
    [edge] = pod["containers"]
    env = {e["name"]: e for e in edge["env"]}
    assert settings.server.admin_port is not None
    admin_host = env["TELEPHONY_EDGE_SERVER__ADMIN_HOST"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert admin_host == "status.podIP"
    assert settings.server.admin_host not in WILDCARDS
    ports = {p["name"]: p["containerPort"] for p in edge["ports"]}
    assert ports["admin"] == settings.server.admin_port
    if pod.get("hostNetwork"):
        host = env["TELEPHONY_EDGE_SERVER__HOST"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert host == "status.podIP" and settings.server.host not in WILDCARDS
    monitor = of_kind(resources, "ServiceMonitor")
    service = of_kind(resources, "Service")
    [endpoint] = monitor["spec"]["endpoints"]
    [scraped] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert scraped["targetPort"] == "admin"


def test_the_loadbalancer_layout_opens_exactly_each_pods_range() -> None:
    resources = kustomize("us-east")
    settings = timings.pod_settings(resources)
    sip = settings.sip  # type: ignore[attr-defined]
    replicas = workload(resources)["spec"]["replicas"]
    balancers = [
        r for r in resources if r["kind"] == "Service" and r["spec"].get("type") == "LoadBalancer"
    ]
    assert len(balancers) == replicas
    for n, service in enumerate(sorted(balancers, key=lambda r: r["metadata"]["name"])):
        spec = service["spec"]
        assert spec["selector"] == {"statefulset.kubernetes.io/pod-name": f"telephony-edge-{n}"}
        assert spec["externalTrafficPolicy"] == "Local"  # the caller's address reaches the edge
        assert spec["publishNotReadyAddresses"] is True  # a draining pod keeps its media
        ports = {p["port"] for p in spec["ports"] if p["protocol"] == "UDP"}
        assert ports == {sip.port, *range(sip.rtp_port_min, sip.rtp_port_max + 1)}
    # two ports a call (RTP, RTCP): the range holds max_calls calls
    assert (sip.rtp_port_max - sip.rtp_port_min + 1) // 2 == settings.server.max_calls
    run(sys.executable, K8S / "build_sip_loadbalancer.py", "--check")


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
    pod = workload(kustomize("us-west"))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [edge] = pod["containers"]
    security = edge["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["allowPrivilegeEscalation"] is False
    assert edge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert edge["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_is_the_drain_arithmetic_and_resources_are_guaranteed(
    overlay: str,
) -> None:
    resources = kustomize(overlay)
    settings = timings.pod_settings(resources)
    pod = workload(resources)["spec"]["template"]["spec"]
    [edge] = pod["containers"]
    command = edge["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["sleep", str(timings.PRESTOP_S)]
    # drain waits for the calls' own maximum: the kubelet's SIGKILL comes after all of it
    assert settings.drain_wait_s == settings.calls.max_duration_s + DRAIN_MARGIN_S
    needed = timings.PRESTOP_S + settings.drain_wait_s + TEARDOWN_WAIT_S + timings.SHUTDOWN_S
    assert pod["terminationGracePeriodSeconds"] == timings.termination_grace_s(settings)
    assert pod["terminationGracePeriodSeconds"] >= needed
    # Guaranteed QoS, everywhere (the development Redis too)
    for resource in resources:
        if resource["kind"] in ("Deployment", "StatefulSet"):
            for container in resource["spec"]["template"]["spec"]["containers"]:
                limits = container["resources"]["limits"]
                assert container["resources"]["requests"] == limits, resource["metadata"]
    assert not timings.problems(overlay)
    if workload(resources)["kind"] == "Deployment":  # new pods first, old ones drain meanwhile
        rolling = workload(resources)["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


def test_the_timings_check_notices_a_manifest_that_disagrees() -> None:
    """``timings.problems`` is not a no-op: an old grace, a burstable pod, a thin HPA fail."""
    resources = kustomize("us-west")
    settings = timings.pod_settings(resources)
    assert timings.termination_grace_s(settings) == 5 + 3605 + 10 + 5
    assert not timings.capacity_kept(150, 150, 3, 1)
    assert timings.capacity_kept(100, 150, 3, 1)
    costs = {cost.network: cost for cost in timings.scorecard()}
    worst = max(costs.values(), key=lambda c: c.cpu_s_per_call_minute)
    assert worst.loop_share(400) > timings.LOOP_BUDGET
    # what the pod runs: its networks at what each may take
    for cost in costs.values():
        calls = timings.calls_at_most(settings, cost)
        assert cost.loop_share(calls) <= timings.LOOP_BUDGET, cost
    assert timings.calls_at_most(settings, costs["Twilio"]) == settings.server.max_calls
    # every call recorded as mp3 has its own ffmpeg: 1 GiB cannot hold 150 of them
    assert timings.memory_needed_mib(150) > timings.MEMORY_BUDGET * timings.mib("1Gi")
    assert timings.memory_needed_mib(150) <= timings.MEMORY_BUDGET * timings.mib("2560Mi")


def test_compose_stop_grace_covers_the_drain() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    edge_config = load_settings(DEPLOY / "edge.yaml")
    grace = compose["services"]["edge-1"]["stop_grace_period"]
    assert float(grace.removesuffix("s")) >= edge_config.drain_wait_s + TEARDOWN_WAIT_S


def test_operations_doc_has_the_capacity_table_of_this_scorecard() -> None:
    settings = timings.pod_settings(kustomize("us-west"))
    table = timings.capacity_table(settings.server.max_calls)
    assert table in (ROOT / "docs" / "operations.md").read_text()


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
