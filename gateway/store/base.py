"""The state store: everything nodes share (DESIGN §6), behind one backend-neutral interface.

Counters with windows, sets with TTL (blocklist, unsubscribes), per-recipient status records
(``GetSendEmailStatus``) and the event outbox. Two backends: SQLite (embedded default) and
Redis (several nodes, one set of limits). Every method is async; a backend never blocks the
event loop.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from gateway.events import Event

STATUS_FIELDS = ("SendStatus", "DeliverStatus", "DeliverMessage", "RequestTime", "DeliverTime",
                 "UserOpened", "UserClicked", "UserUnsubscribed", "UserComplained")


@dataclass
class StatusUpdate:
    """Set ``fields`` on the status record of (message_id, recipient), creating it if new."""

    message_id: str
    recipient: str
    account: str | None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutboxItem:
    seq: int
    event: Event
    state: str                 # pending | sent | failed | disabled
    attempts: int
    next_attempt: float
    last_error: str


class Store(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- status records and events (one atomic step: DESIGN §4, issue 5 "same step") ------------
    @abc.abstractmethod
    async def record(self, updates: list[StatusUpdate], events: list[Event]) -> None:
        """Apply status updates and append events to the outbox atomically."""

    @abc.abstractmethod
    async def query_status(self, *, date: str | None = None, message_id: str | None = None,
                           recipient: str | None = None, account: str | None = None,
                           offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Status records, newest first. ``date`` is ``YYYY-MM-DD`` (UTC) of RequestTime."""

    @abc.abstractmethod
    async def outbox(self, *, state: str | None = None, due_before: float | None = None,
                     limit: int = 100, after_seq: int = 0) -> list[OutboxItem]: ...

    @abc.abstractmethod
    async def outbox_update(self, seq: int, *, state: str, attempts: int, next_attempt: float, last_error: str) -> None: ...

    # -- counters and sets ----------------------------------------------------------------------
    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None, limit: int | None = None) -> tuple[bool, int]:
        """Atomically add ``amount`` unless that would pass ``limit``; returns (added, value).

        A new key expires after ``ttl`` seconds. Two sessions racing for the last slot: one wins.
        """

    @abc.abstractmethod
    async def get_counter(self, key: str) -> int: ...

    @abc.abstractmethod
    async def set_add(self, key: str, member: str, *, ttl: float | None = None, data: dict[str, Any] | None = None) -> None: ...

    @abc.abstractmethod
    async def set_remove(self, key: str, member: str) -> bool: ...

    @abc.abstractmethod
    async def set_get(self, key: str, member: str) -> dict[str, Any] | None:
        """The member's data (``{}`` if it has none) or None when absent or expired."""

    @abc.abstractmethod
    async def set_members(self, key: str, *, prefix: str = "", offset: int = 0, limit: int = 100) -> list[tuple[str, dict[str, Any], float | None]]: ...

    @abc.abstractmethod
    async def purge(self, now: float) -> None:
        """Drop expired counters and set members, status records older than 30 days."""

    async def ping(self) -> bool:
        return True


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") - 1:] if url.startswith("sqlite:////") else url[len("sqlite:///"):])
    raise ValueError(f"unsupported state URL {url!r}")
