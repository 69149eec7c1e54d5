"""The UA's open transactions, indexed so that no packet costs more with more of them.

Theory of operation
-------------------
A transaction is found by its §17.2.3 key (branch + sent-by + method, see
:func:`telephony_edge.sip.transaction.server_key`): a dict lookup. What used
to cost O(open transactions) per packet was the *time*: after every packet the
shell asks for the next deadline, and every tick looked at every machine. With
10 000 transactions in Timer J (a flood of OPTIONS keeps 32 s of them) that
was 4 to 5 ms per packet, and a flood at 1000/s stalled the worker.

:class:`TransactionTable` is a mapping from key to entry that also keeps a
min-heap of ``(deadline, seq, key)``. The heap is lazy: an entry is pushed each
time its machine's deadline may have changed (:meth:`touch`, and on insert),
and an item is valid only while its deadline equals the one recorded for the
key in ``_due``; stale items are popped when they reach the top. So
:meth:`next_deadline` is O(1) amortised and :meth:`pop_due` O(log n) per machine
due. The heap is rebuilt when stale items outnumber live ones, so
memory stays O(open transactions).

Rules: sans-I/O (times are passed in); whoever changes a machine's timers
outside the table calls :meth:`touch` with its key.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from telephony_edge.sip.transaction import Key


class _HasMachine(Protocol):
    @property
    def machine(self) -> _Timed: ...


class _Timed(Protocol):
    def next_deadline(self) -> float | None: ...


E = TypeVar("E", bound=_HasMachine)


class TransactionTable(Generic[E]):
    """A ``dict[Key, E]`` whose entries' machines' deadlines are kept in a heap."""

    def __init__(self) -> None:
        self._entries: dict[Key, E] = {}
        self._due: dict[Key, float] = {}  # key → the deadline its valid heap item has
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()

    # -- the mapping --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)

    def __getitem__(self, key: Key) -> E:
        return self._entries[key]

    def __setitem__(self, key: Key, entry: E) -> None:
        self._entries[key] = entry
        self.touch(key)

    def get(self, key: Key) -> E | None:
        return self._entries.get(key)

    def pop(self, key: Key, default: E | None = None) -> E | None:
        self._due.pop(key, None)
        return self._entries.pop(key, default)

    # -- time ---------------------------------------------------------------------------

    def touch(self, key: Key) -> None:
        """The machine under ``key`` may have new timers: file its next deadline."""
        entry = self._entries.get(key)
        at = entry.machine.next_deadline() if entry is not None else None
        if at is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == at:
            return
        self._due[key] = at
        heapq.heappush(self._heap, (at, next(self._seq), key))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._compact()

    def next_deadline(self) -> float | None:
        """The earliest deadline of any open transaction."""
        heap = self._heap
        while heap:
            at, _, key = heap[0]
            if self._due.get(key) == at:
                return at
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> Key | None:
        """A key whose machine has a timer due at ``now`` (earliest first), or None.
        The heap forgets it until the caller touches it again, which the caller
        does after ticking it (also when the tick raised)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            if self._due.get(key) == at:
                del self._due[key]
                return key
        return None

    def _compact(self) -> None:
        self._heap = [(at, next(self._seq), key) for key, at in self._due.items()]
        heapq.heapify(self._heap)
