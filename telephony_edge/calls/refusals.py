"""What the call service and its callers agree on: the refusals it raises (each with the
HTTP status an API answers with) and what it needs of a network (:class:`Network`)."""

from __future__ import annotations

from typing import Protocol

from telephony_edge import metrics
from telephony_edge.calls.record import CallRecord, CallStatus


class CallRejected(Exception):
    """The edge will not take this call; ``http_status`` says how an API answers."""

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.reason = reason


class ControlFailed(Exception):
    """A hang-up or transfer for a call on another worker did not happen.

    ``http_status`` says how an API answers: 409 when the owner's lease had
    lapsed (the call is reaped on the spot), 504 when the owner did not
    answer in time.
    """

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.reason = reason


class WorkerFull(CallRejected):
    """This worker is at its maximum or draining; another worker may take the call."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, reason)


class KnownCallConflict(CallRejected):
    """A request names a known call with other facts: a forgery under a reused signature."""

    def __init__(self, call_id: str, fact: str) -> None:
        super().__init__(403, f"a known call's {fact} differs from its first webhook")
        self.call_id = call_id
        self.fact = fact


def unavailable() -> CallRejected:
    """The refusal of a new call while the coordinator does not answer (counted)."""
    metrics.CALLS_REFUSED.labels(reason="coordinator").inc()
    return CallRejected(
        503, "call state storage (coordinator) is unreachable; no new calls until it is back"
    )


class ProviderError(Exception):
    """A provider's API refused a request or could not be reached.

    ``status`` is the provider's HTTP status (0: unreachable), ``code`` its
    own error code if it gave one. Controllers and dialers raise it so that
    the public API answers the same way whichever network a call is on.
    """

    def __init__(self, message: str, *, status: int = 0, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Network(Protocol):
    """What the call service needs of a provider (``telephony_edge.provider.Provider``)."""

    @property
    def network_amd(self) -> bool: ...

    @property
    def resumable(self) -> bool:
        """Whether the network brings a live call back to the edge (any worker) when the
        worker carrying it is lost, for another worker to resume (``calls.migration``)."""
        ...

    def final_status(self, provider_status: str) -> tuple[CallStatus, str | None] | None: ...

    async def hangup(self, record: CallRecord) -> None: ...

    async def transfer(self, record: CallRecord, destination: str) -> None: ...

    async def resume(self, call_id: str, generation: int | None) -> bool:
        """Take a live call over on this worker and bring its network here, for a network
        that does not come back to the edge by itself (SIP); whether it runs here now."""
        ...
