"""The relay-latency histogram counted in bulk reads as if every frame were observed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from telephony_edge.calls import relay_latency
from telephony_edge.metrics import RELAY_LATENCY_SECONDS


def histograms() -> tuple[Histogram, Histogram]:
    registry = CollectorRegistry()
    buckets = RELAY_LATENCY_SECONDS._upper_bounds[:-1]
    made = [
        Histogram(f"h{i}", "h", ["direction"], buckets=buckets, registry=registry) for i in range(2)
    ]
    return made[0], made[1]


def samples(histogram: Histogram) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name.split("_", 1)[1], s.labels, round(s.value, 12))
        for family in histogram.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]


def test_bulk_counts_equal_one_observe_per_frame() -> None:
    """Values on, between and past the bucket bounds, more than FLUSH_EVERY of them:
    after the flush the buckets, count and sum are what observe() gives frame by frame,
    and before it at most FLUSH_EVERY - 1 are still held back."""
    direct, bulk = histograms()
    batched = relay_latency.RelayLatency(bulk.labels(direction="x"))
    values = [0.0, 0.00005, 0.00007, 0.0001, 0.0003, 0.001, 0.004, 0.05, 0.2, 3.0] * 15
    for value in values:
        direct.labels(direction="x").observe(value)
        batched.observe(value)
    held = len(values) % relay_latency.FLUSH_EVERY
    count = dict((name, v) for name, _, v in samples(bulk))["count"]
    assert count == len(values) - held
    batched.flush()
    assert samples(bulk) == samples(direct)


def test_a_slow_frame_keeps_its_exemplar() -> None:
    _, bulk = histograms()
    batched = relay_latency.RelayLatency(bulk.labels(direction="x"))
    batched.observe(0.003, {"trace_id": "abc"})  # observed at once, with its trace id
    exemplars = [s.exemplar for family in bulk.collect() for s in family.samples if s.exemplar]
    assert [e.labels for e in exemplars] == [{"trace_id": "abc"}]
