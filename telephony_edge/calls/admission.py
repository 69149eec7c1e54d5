"""Admission: whether this worker takes a new call, and which other worker could.

Network-neutral: the heartbeat each worker publishes (its public URL, load,
maximum and whether it accepts calls) and the choice of another ready worker
from the coordinator's live workers. A network answers a refusal its own way
(Twilio: ``<Redirect>`` to the chosen worker's URL, else ``<Say>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from telephony_edge.agent.pool import AGENT_CORE_PREFIX


def worker_info(
    *, public_url: str, region: str | None, active_calls: int, max_calls: int, accepting: bool
) -> dict[str, Any]:
    """What a worker's heartbeat says about it, for other workers' admission."""
    return {
        "public_url": public_url,
        "region": region,
        "active_calls": active_calls,
        "max_calls": max_calls,
        "accepting": accepting,
        "draining": not accepting,
    }


def full_reason(active: int, max_calls: int, accepting: bool) -> str | None:
    """Why this worker takes no new call now, or None if it does."""
    if not accepting:
        return "this worker is draining and takes no new calls"
    if active >= max_calls:
        return f"this worker is at its maximum of {max_calls} calls"
    return None


def shares_url(workers: Mapping[str, Mapping[str, Any]], self_id: str, own_url: str) -> bool:
    """Whether another live worker answers at ``own_url`` (one load balancer in front of both)."""
    own = own_url.rstrip("/")
    return any(
        str(info.get("public_url") or "").rstrip("/") == own
        for worker_id, info in workers.items()
        if worker_id != self_id and not worker_id.startswith(AGENT_CORE_PREFIX)
    )


def load(info: Mapping[str, Any]) -> float | None:
    """A worker's load (active / maximum calls) by its heartbeat; None when it takes no
    call now (draining or full)."""
    active = float(info.get("active_calls", 0) or 0)
    maximum = float(info.get("max_calls", 0) or 0)
    if not info.get("accepting", False) or maximum <= 0 or active >= maximum:
        return None
    return active / maximum


def other_ready_worker(
    workers: Mapping[str, Mapping[str, Any]],
    *,
    self_id: str,
    own_url: str,
    region: str | None = None,
) -> str | None:
    """The public URL of the least-loaded other worker taking calls (same region first).

    Workers sharing our public URL (one load balancer) are no help and are left out.
    """
    best: tuple[bool, float, str] | None = None
    own = own_url.rstrip("/")
    for worker_id, info in workers.items():
        if worker_id == self_id or worker_id.startswith(AGENT_CORE_PREFIX):
            continue
        url = str(info.get("public_url") or "").rstrip("/")
        share = load(info)
        if not url or url == own or share is None:
            continue
        key = (info.get("region") != region, share, url)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]


def least_loaded_worker(workers: Mapping[str, Mapping[str, Any]], self_id: str) -> str | None:
    """The id of the least-loaded other worker taking calls now (to hand a call to)."""
    ready = [
        (share, worker_id)
        for worker_id, info in workers.items()
        if worker_id != self_id
        and not worker_id.startswith(AGENT_CORE_PREFIX)
        and (share := load(info)) is not None
    ]
    return min(ready)[1] if ready else None
