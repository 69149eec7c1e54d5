"""OpenTelemetry tracing (issue 22): one trace per call, exported to a local OTLP collector.

The edge runs in-process with ``tracing.enabled`` and its exporter pointed at
:class:`Collector`, an OTLP/HTTP receiver on 127.0.0.1 that decodes what the
SDK's exporter POSTs (protobuf, as a collector does). A Twilio call (the
simulator as Twilio, a transfer asked by the agent core) and a SIP call
(``POST /register_sip_call``, then sipp) each make one trace: the request that
announced the call at its root; ``call`` under it with ``call.setup`` and
``agent_core.link``; ``call.transfer``; the end-of-call webhook's delivery.
The agent core gets the link span's ``traceparent`` in ``initiate``, the
webhook receiver the delivery span's as a header, and ``/metrics`` in
OpenMetrics carries the trace id as the call-setup histogram's exemplar.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from telephony_edge.agent import messages
from telephony_edge.calls.record import CallState
from telephony_edge.twilio.simulator import encode_payloads, parse_twiml
from tests.conftest import AgentCoreServer, Edge, wait_for
from tests.sip.conftest import finished, register, sip_test_settings, sipp, sipp_binary
from tests.twilio.harness import (  # noqa: F401
    CALLER,
    LOCAL_NUMBER,
    TwilioEdge,
    fixture_crm,
    fixture_fake_twilio,
    fixture_make_twilio_edge,
    fixture_session,
)

TRANSFER_TO = "+15555550123"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[13]$")  # sampled


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    error: bool


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: every span exported to ``url``."""

    url: str = ""
    spans: list[ExportedSpan] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert service["service.name"] == "edge-under-test"
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        ExportedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={
                                a.key: getattr(a.value, a.value.WhichOneof("value"))
                                for a in span.attributes
                            },
                            error=span.status.code == span.status.STATUS_CODE_ERROR,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def trace(self, trace_id: str) -> dict[str, ExportedSpan]:
        """The spans of one trace by name (each name once per call)."""
        spans = [s for s in self.spans if s.trace_id == trace_id]
        by_name = {s.name: s for s in spans}
        assert len(by_name) == len(spans), [s.name for s in spans]
        return by_name


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    box = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", box.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    box.url = str(server.make_url("/v1/traces"))
    yield box
    await server.close()


@dataclass
class Hooks:
    """The end-of-call webhook's receiver, headers kept."""

    url: str = ""
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    box = Hooks()

    async def ended(request: web.Request) -> web.Response:
        box.received.append((dict(request.headers), json.loads(await request.read())))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ended", ended)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    box.url = str(server.make_url("/ended"))
    yield box
    await server.close()


class TracedCore(AgentCoreServer):
    """Keeps each ``initiate``; answers ``onready``; asks for a transfer when told to."""

    def __init__(self, transfer: bool = False) -> None:
        self.initiates: list[dict[str, Any]] = []
        self.transfer = transfer
        super().__init__()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive_json(timeout=5)
        assert first["method"] == messages.INITIATE
        self.initiates.append(first["data"])
        await ws.send_json({"method": messages.ONREADY})
        if self.transfer:
            await asyncio.sleep(0.3)
            await ws.send_json(
                {"method": messages.TRANSFER_CALL, "data": {"destination": TRANSFER_TO}}
            )
        async for msg in ws:  # until the edge closes the link
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws


@pytest.fixture
async def make_core() -> AsyncIterator[Callable[..., Any]]:
    cores: list[TracedCore] = []

    async def start(transfer: bool = False) -> TracedCore:
        core = TracedCore(transfer)
        await core.server.start_server()
        cores.append(core)
        return core

    yield start
    for core in cores:
        await core.server.close()


def tracing_on(collector: Collector) -> dict[str, Any]:
    return {
        "enabled": True,
        "endpoint": collector.url,
        "service_name": "edge-under-test",
        "export_interval_s": 0.1,
    }


def agents(hooks: Hooks) -> dict[str, Any]:
    return {"echo": {"prompt": "You echo.", "session_data_webhook": hooks.url}}


async def metrics_text(base_url: str) -> str:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(base_url + "/metrics", headers=headers) as r,
    ):
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        return await r.text()


def check_call_trace(
    collector: Collector, core: TracedCore, hooks: Hooks, root_name: str, call_id: str
) -> tuple[str, dict[str, ExportedSpan]]:
    """The call's one trace: what each span is, who its parent is, what the peers got."""
    [initiate] = core.initiates
    match = TRACEPARENT.match(initiate["traceparent"])
    assert match, initiate["traceparent"]
    trace_id, link_span_id = match.groups()
    spans = collector.trace(trace_id)
    root, call = spans[root_name], spans["call"]
    assert root.parent_id == "" and root.kind == 2  # SERVER, the trace's root
    assert root.attributes["http.response.status_code"] == 200
    assert call.parent_id == root.span_id
    assert call.attributes["telephony_edge.call_id"] == call_id
    assert spans["call.setup"].parent_id == call.span_id
    link = spans["agent_core.link"]
    assert (link.span_id, link.parent_id, link.kind) == (link_span_id, call.span_id, 3)
    # the end-of-call webhook: its delivery is a span of the trace, its header names it
    [(headers, payload)] = hooks.received
    assert payload["call_id"] == call_id
    delivery = spans["webhook session_data"]
    assert delivery.parent_id == root.span_id and not delivery.error
    assert headers["traceparent"].startswith(f"00-{trace_id}-{delivery.span_id}-")
    return trace_id, spans


async def test_a_twilio_call_is_one_trace(
    collector: Collector,
    hooks: Hooks,
    make_core: Callable[..., Any],
    make_twilio_edge: Callable[..., Any],
    session: aiohttp.ClientSession,
) -> None:
    core = await make_core(transfer=True)
    edge: TwilioEdge = await make_twilio_edge(
        tracing=tracing_on(collector), agent_core={"url": core.url}, agents=agents(hooks)
    )
    call = edge.call(session)
    edge.fake.add_call(call.call_sid, to=LOCAL_NUMBER, from_=CALLER)  # Twilio knows it
    stream = parse_twiml(await call.post_webhook()).stream
    assert stream is not None
    call_id = stream.parameters["call_id"]
    await call.open_stream(stream)
    await call.stream_audio(encode_payloads(b"\xff" * 8000))  # a second of the caller
    service = edge.services.call_service
    await wait_for(lambda: service.manager.get(call_id) is None, 10)
    await call.stop()
    record = await service.get(call_id)
    assert record is not None and record.state is CallState.ENDED
    assert record.transferred_to == TRANSFER_TO
    await wait_for(lambda: hooks.received, 10)
    await wait_for(lambda: any(s.name == "webhook session_data" for s in collector.spans), 10)

    trace_id, spans = check_call_trace(collector, core, hooks, "POST /twilio/voice", call_id)
    assert spans["call"].attributes["telephony_edge.call_status"] == "agent-ended"
    transfer = spans["call.transfer"]
    assert transfer.parent_id == spans["call"].span_id and not transfer.error
    assert transfer.attributes["telephony_edge.transfer.by"] == "agent"
    assert record.traceparent is not None and trace_id in record.traceparent
    # the call's set-up time carries its trace id (OpenMetrics exemplar)
    text = await metrics_text(edge.base)
    setup = [line for line in text.splitlines() if "call_setup_seconds_bucket" in line]
    assert any(f'# {{trace_id="{trace_id}"}}' in line for line in setup), setup


async def test_a_sip_call_is_one_trace(
    collector: Collector,
    hooks: Hooks,
    make_core: Callable[..., Any],
    make_edge: Callable[..., Any],
    tmp_path: Path,
) -> None:
    sipp_binary()
    core = await make_core()
    settings = sip_test_settings(
        hooks,  # a receiver: its url
        tracing=tracing_on(collector),
        agent_core={"url": core.url},
    )
    edge: Edge = await make_edge(settings)
    reg = await register(edge)
    process = await sipp(edge, "uac_pcma_pcap.xml", reg["call_id"], tmp_path, "-d", "1500")
    await finished(process, tmp_path)
    await wait_for(lambda: hooks.received, 10)
    await wait_for(lambda: any(s.name == "webhook session_data" for s in collector.spans), 10)

    _, spans = check_call_trace(collector, core, hooks, "POST /register_sip_call", reg["call_id"])
    assert spans["call"].attributes["telephony_edge.provider"] == "sip"
    assert spans["call"].attributes["telephony_edge.call_status"] == "user-ended"


async def test_tracing_off_sends_no_traceparent(
    hooks: Hooks, make_core: Callable[..., Any], make_edge: Callable[..., Any], tmp_path: Path
) -> None:
    sipp_binary()
    core = await make_core()
    settings = sip_test_settings(hooks, agent_core={"url": core.url})
    edge: Edge = await make_edge(settings)
    reg = await register(edge)
    process = await sipp(edge, "uac_pcma_pcap.xml", reg["call_id"], tmp_path, "-d", "500")
    await finished(process, tmp_path)
    await wait_for(lambda: hooks.received, 10)
    assert "traceparent" not in core.initiates[0]
    [(headers, _)] = hooks.received
    assert "traceparent" not in {name.lower() for name in headers}
