"""The arithmetic behind the numbers in k8s/, in one place, and the check that they agree.

    python k8s/timings.py            # the numbers, and the capacity table for docs/operations.md
    python k8s/timings.py --check    # exit 1 unless every overlay's rendered manifests agree

Drain. Kubernetes deletes a pod: ``preStop`` sleeps ``PRESTOP_S`` (the endpoint
removal reaches every proxy), then SIGTERM. The edge stops taking calls and waits
for its live ones up to ``Settings.drain_wait_s`` (``calls.max_duration_s`` unless
``server.drain_grace_s`` says otherwise), ends any left and gives their teardown up
to ``TEARDOWN_WAIT_S``, then closes its listeners and background work within
``SHUTDOWN_S``. The kubelet's SIGKILL comes ``terminationGracePeriodSeconds`` after
the deletion, ``preStop`` included, so::

    terminationGracePeriodSeconds = PRESTOP_S + drain_wait_s + TEARDOWN_WAIT_S + SHUTDOWN_S

Capacity. The HPA holds the pods' average of live calls at ``target``; the PDB lets
``u`` of them go at once (an eviction drains its pod while its replacement starts).
The pods left must hold those calls: ``target * n <= max_calls * (n - u)`` for every
``n >= minReplicas``, i.e. ``target <= max_calls * (1 - u / minReplicas)``.

CPU. A worker is one Python process: its event loop uses one core at most. At
``server.max_calls`` calls of the costliest network measured (``docs/scorecard.md``)
the loop must stay under ``LOOP_BUDGET`` of that core; the container gets
``POD_CPU`` whole cores, requests equal to limits (Guaranteed QoS: no CFS throttling
of the loop while the encoders, the collector and the kernel's share use the rest).

Memory. The worker's RSS idle and per live call (``docs/scorecard.md``), plus one
ffmpeg for each call recorded as mp3 or ogg (encoded while the call runs, about
``FFMPEG_MIB`` each): at ``max_calls`` calls, every one of them recorded compressed,
within ``MEMORY_BUDGET`` of the limit (requests equal to limits here too).
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony_edge.calls.manager import TEARDOWN_WAIT_S  # noqa: E402
from telephony_edge.config import Settings  # noqa: E402
from telephony_edge.config_loading import load_settings  # noqa: E402

K8S = ROOT / "k8s"
SCORECARD = ROOT / "docs" / "scorecard.md"
OVERLAYS = ("us-west", "eu-west", "us-east", "dev")
DEVELOPMENT = ("dev",)
"""One pod: no capacity is promised through a disruption."""

PRESTOP_S = 5
"""``preStop``'s sleep: endpoint removal reaching kube-proxy, the Ingress and the cloud LB."""
SHUTDOWN_S = 5
"""After the drain: the listeners close, background loops stop, webhooks in flight finish."""
LOOP_BUDGET = 0.75
"""The share of one core the event loop may need at ``max_calls``: room for bursts and GC."""
POD_CPU = 2
"""Cores per pod, requests == limits: one for the loop, one for encoders and the rest."""
CPU_FALLBACK = 40
"""The HPA's CPU target (% of ``POD_CPU``): 0.8 of a core, the loop near its own limit."""
WORKER_IDLE_MIB = 80
"""An idle worker's RSS (``telephony-edge serve``, 78.5 MB measured)."""
CALL_MIB = 0.5
"""A live call's share of the worker's RSS (110-127 MB at 100 calls in the scorecard)."""
FFMPEG_MIB = 12
"""One call's ffmpeg encoding mp3/ogg while it runs (its PSS with 20 running)."""
MEMORY_BUDGET = 0.8
"""The share of the memory limit the worst case may use: room for bursts and the page cache."""


def memory_needed_mib(max_calls: int) -> float:
    """The pod's memory at ``max_calls`` live calls, each recorded compressed."""
    return WORKER_IDLE_MIB + max_calls * (CALL_MIB + FFMPEG_MIB)


def mib(quantity: str) -> float:
    """A Kubernetes memory quantity (``2560Mi``, ``3Gi``) in MiB."""
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def termination_grace_s(settings: Settings) -> int:
    """``terminationGracePeriodSeconds`` for a pod running on ``settings``."""
    return math.ceil(PRESTOP_S + settings.drain_wait_s + TEARDOWN_WAIT_S + SHUTDOWN_S)


def calls_at_most(settings: Settings, cost: Cost) -> int:
    """How many calls of ``cost``'s network a pod on ``settings`` takes (0: not enabled):
    ``server.max_calls``, and for WebRTC its peer connections' own bound."""
    network = cost.network.split()[0].lower()
    section = getattr(settings, network, None)
    if section is None or not section.enabled:
        return 0
    limit = settings.server.max_calls
    return min(limit, settings.webrtc.max_peer_connections) if network == "webrtc" else limit


def capacity_kept(target: float, max_calls: int, min_replicas: int, max_unavailable: int) -> bool:
    """Whether the pods the PDB leaves hold the calls the HPA lets each pod carry."""
    return target <= max_calls * (1 - max_unavailable / min_replicas)


@dataclass(frozen=True, slots=True)
class Cost:
    """One network's row of ``docs/scorecard.md``."""

    network: str
    cpu_s_per_call_minute: float
    calls_per_core: int
    """At 80 % of a core."""

    def loop_share(self, calls: int) -> float:
        """The share of one core the loop needs for ``calls`` live calls."""
        return calls * self.cpu_s_per_call_minute / 60


def scorecard(path: Path = SCORECARD) -> list[Cost]:
    """The measured CPU per call-minute of each network (``bench/scorecard.py``'s table)."""
    costs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 3 and re.fullmatch(r"\d+", cells[1]) and re.fullmatch(r"[\d.]+", cells[2]):
            costs.append(Cost(cells[0], float(cells[2]), int(cells[3])))
    if not costs:
        raise SystemExit(f"{path}: no network's figures found")
    return costs


def capacity_table(max_calls: int) -> str:
    """docs/operations.md's table: calls per pod and per CPU, from the scorecard."""
    rows = [
        "| network | CPU-s per call-minute | calls per core at 80 % | loop at "
        f"{max_calls} calls | calls per pod | calls per CPU requested |",
        "|---|---|---|---|---|---|",
    ]
    for cost in scorecard():
        per_pod = min(cost.calls_per_core, max_calls)
        rows.append(
            f"| {cost.network} | {cost.cpu_s_per_call_minute:.3f} | {cost.calls_per_core} | "
            f"{cost.loop_share(max_calls):.0%} of a core | {per_pod} | {per_pod / POD_CPU:g} |"
        )
    return "\n".join(rows)


# -- the rendered manifests ----------------------------------------------------------------


def render(overlay: str) -> list[dict[str, Any]]:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [doc for doc in yaml.safe_load_all(built) if doc]


def workload(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The edge's Deployment or StatefulSet."""
    [found] = [
        r
        for r in resources
        if r["kind"] in ("Deployment", "StatefulSet") and r["metadata"]["name"] == "telephony-edge"
    ]
    return found


#: what the downward API and the Secrets give a pod, for checking its settings offline
POD_IP = "10.0.0.5"
PUBLIC_IP = "203.0.113.7"
FROM_FIELD = {"status.podIP": POD_IP, "metadata.name": "telephony-edge-0", "spec.nodeName": "n1"}
SECRET = "secret-from-the-secret-0001"
REDIS_URL = "redis://redis:6379/0"


def pod_env(resources: list[dict[str, Any]]) -> dict[str, str]:
    """The edge container's ``TELEPHONY_EDGE_*`` environment as a pod would see it: the
    downward API's and the Secrets' values stand-ins, a per-node or per-pod address file
    (``$(NODE_NAME)``, ``$(POD_NAME)``) as the public address it holds."""
    [edge] = workload(resources)["spec"]["template"]["spec"]["containers"]
    env = {}
    for var in edge.get("env", []):
        name, source = var["name"], var.get("valueFrom", {})
        if "fieldRef" in source:
            env[name] = FROM_FIELD[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            env[name] = REDIS_URL if name.endswith("REDIS_URL") else SECRET
        else:
            env[name] = var["value"]
    if env.pop("TELEPHONY_EDGE_SIP__ADVERTISED_HOST_FILE", None):
        env["TELEPHONY_EDGE_SIP__ADVERTISED_HOST"] = PUBLIC_IP
    return {k: v for k, v in env.items() if k.startswith("TELEPHONY_EDGE_")}


def pod_settings(resources: list[dict[str, Any]]) -> Settings:
    """The settings the edge's pods run on: the ConfigMap's file plus :func:`pod_env`."""
    import os
    import tempfile

    [config] = [
        r
        for r in resources
        if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith("telephony-edge-config")
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config["data"]["config.yaml"])
    saved = dict(os.environ)
    try:
        os.environ.update(pod_env(resources))
        return load_settings(f.name)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        os.unlink(f.name)


def problems(overlay: str) -> list[str]:
    """Where ``overlay``'s rendered manifests disagree with the arithmetic above."""
    resources = render(overlay)
    settings = pod_settings(resources)
    pod = workload(resources)["spec"]["template"]["spec"]
    [edge] = pod["containers"]
    found = []
    grace = termination_grace_s(settings)
    if pod.get("terminationGracePeriodSeconds") != grace:
        found.append(f"terminationGracePeriodSeconds is not {grace}")
    if edge["lifecycle"]["preStop"]["exec"]["command"] != ["sleep", str(PRESTOP_S)]:
        found.append(f"preStop is not sleep {PRESTOP_S}")
    resources_ = edge["resources"]
    if resources_["requests"] != resources_["limits"]:
        found.append("requests differ from limits (not Guaranteed QoS)")
    if str(resources_["limits"]["cpu"]) != str(POD_CPU):
        found.append(f"the CPU limit is not {POD_CPU}")
    memory = memory_needed_mib(settings.server.max_calls)
    if memory > MEMORY_BUDGET * mib(str(resources_["limits"]["memory"])):
        found.append(f"the memory limit leaves less than {memory:.0f} MiB for max_calls")
    for cost in scorecard():
        calls = calls_at_most(settings, cost)
        if calls and cost.loop_share(calls) > LOOP_BUDGET:
            found.append(f"{calls} {cost.network} calls need more than {LOOP_BUDGET} core")
    hpas = [r for r in resources if r["kind"] == "HorizontalPodAutoscaler"]
    [pdb] = [r for r in resources if r["kind"] == "PodDisruptionBudget"]
    for hpa in [] if overlay in DEVELOPMENT else hpas:
        spec = hpa["spec"]
        [calls] = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
        target = float(calls["target"]["averageValue"])
        unavailable = int(pdb["spec"]["maxUnavailable"])
        if not capacity_kept(target, settings.server.max_calls, spec["minReplicas"], unavailable):
            found.append(f"HPA target {target:g} with the PDB's {unavailable} leaves too few pods")
        [cpu] = [m["resource"] for m in spec["metrics"] if m["type"] == "Resource"]
        if cpu["target"]["averageUtilization"] != CPU_FALLBACK:
            found.append(f"the HPA's CPU target is not {CPU_FALLBACK} %")
    return [f"{overlay}: {p}" for p in found]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check every overlay; exit 1 if off")
    args = parser.parse_args()
    if args.check:
        found = [p for overlay in OVERLAYS for p in problems(overlay)]
        for problem in found:
            print(problem, file=sys.stderr)
        return 1 if found else 0
    settings = pod_settings(render("us-west"))
    print(f"terminationGracePeriodSeconds: {termination_grace_s(settings)}")
    print(capacity_table(settings.server.max_calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
