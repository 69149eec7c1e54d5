"""OpenTelemetry tracing, off by default: spans, W3C ``traceparent`` and exemplars.

Theory of operation
-------------------
``tracing.enabled: true`` makes :func:`configure` import the OpenTelemetry SDK
(never before: a worker without tracing does not load it,
``tests/test_lazy_imports.py``), and set up a tracer whose spans go in
batches to an OTLP/HTTP collector (``tracing.endpoint``; none: the
exporter's own ``OTEL_EXPORTER_OTLP_*`` environment, else
``http://localhost:4318/v1/traces``). The batch queue is bounded
(``tracing.max_queued_spans``: what a collector that is down costs is that
many spans, then spans are dropped, never calls), and sampling follows
``tracing.sample_ratio`` at the root, the parent's decision below it.

The rest of the edge speaks only to this module: :func:`start` returns a
:class:`Span` handle and :func:`span` does the same as a context manager that
also makes it the current span (so spans started inside, and outgoing
requests, are its children). With tracing off both return :data:`NOOP`,
whose methods do nothing, at the cost of one ``if``.

A span's parent is the current span, unless ``parent`` names one by its W3C
``traceparent`` (``00-<trace id>-<span id>-<flags>``): how a call's trace
crosses workers and time. The call record keeps the ``traceparent`` of the
span it was created under (the carrier's webhook), so the worker that runs
the media, and the one that sends the end-of-call webhook later, add their
spans to the same trace. :func:`headers` gives the current span's
``traceparent`` for a request the edge makes (webhooks), and
:meth:`Span.exemplar` its trace id for a Prometheus exemplar (exposed by
``/metrics`` to a scraper that asks for OpenMetrics).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from telephony_edge.config import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

Kind = Literal["internal", "server", "client"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Attributes = Mapping[str, str | int | float | bool]

_tracer: Tracer | None = None
_shutdown: list[Any] = []  # the SDK's TracerProvider, to flush at exit


class Span:
    """A started span (or :data:`NOOP`): attributes, an error, its end, its context."""

    __slots__ = ("_span",)

    def __init__(self, span: OtelSpan | None) -> None:
        self._span = span

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` naming this span as a parent; None when not traced."""
        if self._span is None:
            return None
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(self._span))
        return carrier.get("traceparent")

    def exemplar(self) -> dict[str, str] | None:
        """``{"trace_id": …}`` for a histogram's exemplar when this span is sampled."""
        if self._span is None:
            return None
        context = self._span.get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:
            return None
        return {"trace_id": f"{context.trace_id:032x}"}

    def set(self, key: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def fail(self, message: str) -> None:
        """Mark the span as failed (status ERROR with ``message``)."""
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        if self._span is not None:
            self._span.end()


NOOP = Span(None)


def enabled() -> bool:
    return _tracer is not None


def configure(settings: TracingSettings) -> None:
    """Set up the tracer when ``settings.enabled`` (imports the SDK only then)."""
    global _tracer
    if not settings.enabled or _tracer is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint,
        headers=dict(settings.headers) or None,
        timeout=settings.export_timeout_s,
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.max_queued_spans,
            schedule_delay_millis=settings.export_interval_s * 1000,
        )
    )
    _tracer = provider.get_tracer("telephony_edge")
    _shutdown.append(provider)
    log.info("tracing on", extra={"endpoint": settings.endpoint or "(OTEL_* environment)"})


def shutdown() -> None:
    """Export what is queued and stop (the worker's exit); tracing is off afterwards."""
    global _tracer
    _tracer = None
    while _shutdown:
        _shutdown.pop().shutdown()


def _context(parent: str | None) -> Any:
    if parent is None:
        return None  # the current context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": parent})


def start(
    name: str,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Attributes | None = None,
) -> Span:
    """Start a span (child of ``parent``, else of the current span); :meth:`Span.end` ends it."""
    tracer = _tracer
    if tracer is None:
        return NOOP
    from opentelemetry.trace import SpanKind

    span_kind = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER}.get(
        kind, SpanKind.CLIENT
    )
    return Span(
        tracer.start_span(
            name, context=_context(parent), kind=span_kind, attributes=dict(attributes or {})
        )
    )


def attach(span: Span) -> object | None:
    """Make ``span`` the current one (its children's default parent) until :func:`detach`."""
    if span._span is None:
        return None
    from opentelemetry import context, trace

    return context.attach(trace.set_span_in_context(span._span))


def detach(token: object | None) -> None:
    """Undo an :func:`attach`, in the same task."""
    if token is not None:
        from opentelemetry import context

        context.detach(token)  # type: ignore[arg-type]


@contextlib.contextmanager
def current(span: Span) -> Iterator[None]:
    """Make ``span`` the current one inside the block."""
    token = attach(span)
    try:
        yield
    finally:
        detach(token)


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Attributes | None = None,
) -> Iterator[Span]:
    """A span around the block, current inside it; an exception marks it failed."""
    handle = start(name, parent=parent, kind=kind, attributes=attributes)
    try:
        with current(handle):
            yield handle
    except Exception as exc:
        handle.fail(type(exc).__name__)
        raise
    finally:
        handle.end()


def current_traceparent() -> str | None:
    """The current span's ``traceparent`` (None: tracing off, or no span)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return Span(trace.get_current_span()).traceparent


def headers() -> dict[str, str]:
    """``{"traceparent": …}`` for a request made inside the current span, else empty."""
    traceparent = current_traceparent()
    return {} if traceparent is None else {"traceparent": traceparent}


def install(app: web.Application, paths: Iterable[str]) -> None:
    """With tracing on, a server span around each request to ``paths``: the requests that
    announce a call (carrier webhooks, offers, the API's), each the root of its call's trace."""
    if _tracer is None:
        return
    traced = frozenset(paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in traced:
            return await handler(request)
        attributes = {"http.request.method": request.method, "url.path": request.path}
        if request.remote:
            attributes["client.address"] = request.remote
        handle = start(f"{request.method} {request.path}", kind="server", attributes=attributes)
        status = 500
        try:
            with current(handle):
                response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # aiohttp's way to answer 4xx (or a redirect)
            status = exc.status
            raise
        finally:
            handle.set("http.response.status_code", status)
            if status >= 500:
                handle.fail(f"HTTP {status}")
            handle.end()

    app.middlewares.append(middleware)
