"""SES events and delivery status codes (DESIGN §4, ses-semantics.md §4-5)."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

# GetSendEmailStatus DeliverStatus codes.
DELIVER_QUEUED = 0
DELIVER_DELIVERED = 1
DELIVER_DROPPED = 2
DELIVER_REJECTED = 3     # rejected by the recipient's server (bounce)
DELIVER_DEFERRED = 8

EVENT_NAMES = ("processed", "deferred", "delivered", "dropped", "bounce", "open", "click", "spamreport", "unsubscribe")

# Tencent's callback ``eventid`` numbers (ses-semantics.md §5.2, docs 1084/39492).
# ``processed`` has no Tencent number (newer documents drop it as intermediate): 0.
EVENT_IDS = {"processed": 0, "delivered": 1, "dropped": 2, "bounce": 3, "open": 4, "click": 5,
             "spamreport": 6, "unsubscribe": 7, "deferred": 8}


@dataclass
class Event:
    """One SES event for one recipient of one message."""

    event: str
    email: str                      # the recipient
    message_id: str                 # the gateway's MessageId (Tencent's bulkId)
    account: str | None
    timestamp: float = field(default_factory=time.time)
    reason: str = ""
    bounce_type: str = ""           # soft_bounce | hard_bounce
    sender: str = ""
    from_domain: str = ""
    template_id: str = ""
    subject: str = ""
    smtp_message_id: str = ""       # RFC 5322 Message-ID
    link: str = ""
    useragent: str = ""
    source_address: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    custom: str = ""                # X-SES-Callback-Custom
    id: str = field(default_factory=lambda: "evt_" + secrets.token_hex(12))

    def __post_init__(self) -> None:
        if self.event not in EVENT_NAMES:
            raise ValueError(f"unknown event {self.event!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Event":
        return cls(**data)
