"""Callback payloads: one :class:`gateway.events.Event` → the JSON object Tencent SES posts.

Field names and types follow Tencent's event-notification document (ses-semantics.md §5.2,
docs 1084/39492, 2025-10-30 sample), so a receiver written for Tencent callbacks reads ours
unchanged. Two fields are ours: ``id`` (stable per event, the de-duplication key, equal to
the ``webhook-id`` header of an unbatched post) and ``tags`` (``X-SES-Tags``).

Event numbers: ``gateway.events.EVENT_IDS`` (Tencent's ``eventid``: 1 delivered, 2 dropped,
3 bounce, 4 open, 5 click, 6 spamreport, 7 unsubscribe, 8 deferred; 0 for ``processed``).
"""
from __future__ import annotations

import email.header
from typing import Any

from gateway.events import EVENT_IDS, Event

CUSTOM_FIELD = "X-Tencentcloudses-Cb-Custom"


def encode_subject(subject: str) -> str:
    """Tencent sends a non-ASCII subject MIME-encoded (RFC 2047), ASCII as is."""
    if subject.isascii():
        return subject
    return email.header.Header(subject, "utf-8").encode()


def template_number(template_id: str) -> int:
    """``templateId`` is an integer in Tencent's payload; 0 when the mail used no template."""
    text = template_id.strip()
    return int(text) if text.isdigit() else 0


def payload(event: Event) -> dict[str, Any]:
    """The callback object for one event (key order as in Tencent's sample)."""
    body: dict[str, Any] = {
        "event": event.event,
        "email": event.email,
        "bulkId": event.message_id,
        "timestamp": int(event.timestamp),
        "reason": event.reason,
        "bounceType": event.bounce_type,
        "username": event.account or "",
        "from": event.sender,
        "fromDomain": event.from_domain,
        "templateId": template_number(event.template_id),
        "subject": encode_subject(event.subject),
        "messageId": event.smtp_message_id,
        "eventid": EVENT_IDS[event.event],
        CUSTOM_FIELD: event.custom,
    }
    if event.event == "click":
        body["link"] = event.link
    if event.event in ("open", "click"):
        body["useragent"] = event.useragent
    body["id"] = event.id
    body["tags"] = dict(event.tags)
    return body
