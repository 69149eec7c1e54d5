"""The end-of-call webhook's delivery: a dispatcher per worker on the durable queue.

See :mod:`telephony_edge.calls.webhooks` for what is sent and how it is signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass

import aiohttp
from yarl import URL

from telephony_edge import metrics, tracing
from telephony_edge.calls.webhooks import (
    DEAD_LETTER_GAUGE_INTERVAL,
    IDEMPOTENCY_HEADER,
    MIN_TIMEOUT,
    SESSION_MAX_TIMEOUT,
    SESSION_TIMEOUT,
    SESSION_WEBHOOK_QUEUE,
    ResultHook,
    TargetRefused,
    refused_target,
    report_result,
    resolve_target,
    signed_headers,
)
from telephony_edge.coord.base import Coordinator, Job

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``base * factor**(attempt-1)``, capped, ± ``jitter`` fraction."""

    base_delay: float = 2.0
    factor: float = 2.0
    max_delay: float = 600.0
    jitter: float = 0.2
    max_attempts: int = 10

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        raw = min(self.max_delay, self.base_delay * self.factor ** max(0, attempt - 1))
        return max(0.0, raw * (1 + random.uniform(-self.jitter, self.jitter)))


def _retry_after(value: str | None, cap: float) -> float | None:
    if value is None:
        return None
    try:
        return min(max(0.0, float(value)), cap)
    except ValueError:
        return None  # an HTTP date: rare, ignore it and back off normally


class WebhookDispatcher:
    """Delivers queued end-of-call webhooks; run one per worker.

    ``run()`` reserves due jobs and POSTs up to ``concurrency`` at a time
    until cancelled or :meth:`drain` is called. A job in flight when its
    worker dies reappears after ``visibility_timeout`` for another worker.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        session: aiohttp.ClientSession,
        *,
        secret: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        queue: str = SESSION_WEBHOOK_QUEUE,
        concurrency: int = 8,
        visibility_timeout: float = SESSION_MAX_TIMEOUT + 30.0,
        poll_interval: float = 0.5,
        on_result: ResultHook | None = None,
        allow_private_targets: bool = False,
    ) -> None:
        if visibility_timeout <= SESSION_MAX_TIMEOUT:
            raise ValueError("visibility_timeout must exceed the longest request timeout")
        self._coord = coordinator
        self._session = session
        self._secret = secret
        self._retry = retry
        self._queue = queue
        self._slots = asyncio.Semaphore(concurrency)
        self._visibility = visibility_timeout
        self._poll = poll_interval
        self._on_result = on_result
        self._allow_private = allow_private_targets
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Deliver until :meth:`drain` or cancellation. Jobs cut off are redelivered later."""
        loop = asyncio.get_running_loop()
        gauge_due = loop.time()
        queue_down = False
        try:
            while not self._stopping.is_set():
                if loop.time() >= gauge_due:
                    gauge_due = loop.time() + DEAD_LETTER_GAUGE_INTERVAL
                    await self.refresh_dead_letter_gauge()
                await self._slots.acquire()
                if self._stopping.is_set():
                    self._slots.release()
                    break
                try:
                    job = await self._coord.reserve(self._queue, self._visibility)
                except Exception as exc:  # Redis restarting or failing over: retried, said once
                    self._slots.release()
                    if not queue_down:
                        logger.warning("webhook queue unavailable: %r; retrying", exc)
                    queue_down = True
                    await self._sleep(self._poll)
                    continue
                if queue_down:
                    logger.info("webhook queue available again")
                    queue_down = False
                if job is None:
                    self._slots.release()
                    await self._sleep(self._poll)
                    continue
                task = asyncio.create_task(self._deliver_then_release(job))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except asyncio.CancelledError:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            raise

    async def flush(self, grace: float = 10.0) -> int:
        """Deliver every job due now, one by one, for at most ``grace`` seconds.

        For a worker whose queue does not outlive it (the in-memory backend):
        at shutdown, what is due is sent now or never. Retries that are
        scheduled for later are not waited for. Returns how many were tried.
        """
        tried = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while (job := await self._coord.reserve(self._queue, self._visibility)) is not None:
                    await self.deliver(job)
                    tried += 1
        return tried

    async def drain(self, grace: float = 10.0) -> None:
        """Stop taking jobs; give those in flight ``grace`` seconds, then cancel them."""
        self._stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _deliver_then_release(self, job: Job) -> None:
        try:
            await self.deliver(job)
        except Exception:
            # Left reserved: it comes back after the visibility timeout.
            logger.exception("webhook delivery crashed", extra={"call_id": job.job_id})
        finally:
            self._slots.release()

    async def deliver(self, job: Job) -> str:
        """POST one reserved job, then ack or nack it. Returns the outcome.

        The attempt is a span of the call's trace (the job's ``traceparent``), and the
        POST carries its own ``traceparent`` header (tracing on).
        """
        parent = job.data.get("traceparent")
        span = tracing.start(
            "webhook session_data",
            parent=parent if isinstance(parent, str) else None,
            kind="client",
            attributes={
                "telephony_edge.call_id": str(job.data.get("call_id", job.job_id)),
                "telephony_edge.webhook.attempt": job.attempts,
            },
        )
        outcome = "crashed"
        try:
            with tracing.current(span):
                outcome = await self._post(job)
            return outcome
        finally:
            span.set("telephony_edge.webhook.outcome", outcome)
            if outcome != "delivered":
                span.fail(outcome)
            span.end()

    async def _post(self, job: Job) -> str:
        data = job.data
        call_id = str(data.get("call_id", job.job_id))
        log_extra = {"call_id": call_id}
        url, body = data.get("url"), data.get("body")
        extra_headers, timeout = data.get("headers", {}), data.get("timeout", SESSION_TIMEOUT)
        if (
            not isinstance(url, str)
            or not isinstance(body, str)
            or not isinstance(extra_headers, dict)
            or isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
        ):
            logger.error("dropping malformed webhook job %s", job.job_id, extra=log_extra)
            await self._coord.ack(self._queue, job.job_id)
            return self._done("malformed")

        raw = body.encode()
        own = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: call_id, **tracing.headers()}
        timeout = min(max(float(timeout), MIN_TIMEOUT), SESSION_MAX_TIMEOUT)

        status: int | None = None
        retry_after: float | None = None
        reason: str
        extra = {str(k): str(v) for k, v in extra_headers.items()}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):  # the name's resolution only
                target = await resolve_target(URL(url), allow_private=self._allow_private)
            async with self._session.post(
                target.url,
                data=raw,
                headers=signed_headers(self._secret, raw, extra, own, target.headers),
                server_hostname=target.server_hostname,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=max(MIN_TIMEOUT, deadline - loop.time())),
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"), self._retry.max_delay)
            reason = f"http status {status}"
        except TargetRefused as e:
            await self._dead_letter(job, f"target refused: {e}")
            refused_target("session_webhook", url, str(e), call_id, None)
            return self._done("refused")
        except TimeoutError:
            reason = f"timed out after {timeout:g} s"
        except (aiohttp.ClientError, OSError) as e:
            reason = f"request failed: {type(e).__name__}: {e}"
        except ValueError as e:  # CR/LF in a header, a host label past 63 (UnicodeError)…
            # the request itself can never be sent: no retry helps
            await self._dead_letter(job, f"invalid request: {type(e).__name__}: {e}")
            logger.warning(
                "session webhook cannot be sent (%s: %s); dead-lettered",
                type(e).__name__,
                e,
                extra=log_extra,
            )
            return self._done("invalid")

        if status is not None and 200 <= status < 300:
            await self._coord.ack(self._queue, job.job_id)
            logger.info(
                "session webhook delivered (attempt %d, status %d)",
                job.attempts,
                status,
                extra=log_extra,
            )
            return self._done("delivered")
        if status is not None and 300 <= status < 500 and status not in (408, 429):
            await self._dead_letter(job, f"rejected: {reason}")
            logger.error(
                "session webhook rejected with %s, not retried (attempt %d); dead-lettered",
                reason,
                job.attempts,
                extra=log_extra,
            )
            return self._done("rejected")
        if job.attempts >= self._retry.max_attempts:
            await self._dead_letter(job, f"{job.attempts} attempts, the last: {reason}")
            logger.error(
                "session webhook given up after %d attempts: %s; dead-lettered",
                job.attempts,
                reason,
                extra=log_extra,
            )
            return self._done("gave_up")
        delay = self._retry.delay(job.attempts)
        if retry_after is not None:
            delay = max(delay, retry_after)
        await self._coord.nack(self._queue, job, delay)
        logger.warning(
            "session webhook attempt %d failed (%s); retry in %.1f s",
            job.attempts,
            reason,
            delay,
            extra=log_extra,
        )
        return self._done("retry")

    def _done(self, outcome: str) -> str:
        report_result(self._on_result, "session_webhook", outcome)
        return outcome

    async def _dead_letter(self, job: Job, reason: str) -> None:
        """Keep a job given up on for an operator; a stale reservation changes nothing."""
        if await self._coord.dead_letter(self._queue, job, reason):
            metrics.WEBHOOK_DEAD_LETTERS_TOTAL.inc()
        await self.refresh_dead_letter_gauge()

    async def refresh_dead_letter_gauge(self) -> None:
        """Set the dead-letter size gauge from the shared queue (every worker shows the total)."""
        try:
            metrics.WEBHOOK_DEAD_LETTERS.set(await self._coord.dead_letter_count(self._queue))
        except Exception:  # a metric must not break delivery
            logger.debug("dead-letter count unavailable", exc_info=True)
