"""One recipient's delivery: what the scheduler, routing and prepare hooks see."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.spool import QueuedMessage, RecipientState
from gateway.transports.base import Route


@dataclass(frozen=True)
class Hold:
    """Returned by ``gateway_delivery_gate``: wait until ``until`` (UNIX time) because ``reason``."""

    until: float
    reason: str


@dataclass(eq=False)     # identity semantics: deliveries live in sets and heaps
class Delivery:
    message: QueuedMessage
    index: int
    route: Route | None = None
    source_address: str | None = None
    stash: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> RecipientState:
        return self.message.recipients[self.index]

    @property
    def recipient(self) -> str:
        return self.message.recipients[self.index].recipient

    @property
    def domain(self) -> str:
        return self.recipient.rpartition("@")[2].lower()

    @property
    def sender(self) -> str:
        return self.message.sender

    @property
    def account(self) -> str | None:
        return self.message.account

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def meta(self) -> dict[str, Any]:
        return self.message.meta

    @property
    def attempts(self) -> int:
        return self.message.recipients[self.index].attempts
