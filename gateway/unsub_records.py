"""What an unsubscription, an open or a click changes in the state store.

- unsubscribe: the (sender domain, recipient) pair goes into the unsubscribe list of
  :mod:`gateway.suppression` (the ses_policy plugin refuses later RCPTs from it), the status
  record of the message gets ``UserUnsubscribed = true`` and an ``unsubscribe`` event is
  emitted — once: a repeated POST or a second message's link changes nothing more
  (RFC 8058 one-click must be idempotent, reliability.md §8 row 66).
- open / click: ``UserOpened`` / ``UserClicked`` and one ``open`` / ``click`` event per hit.

The status record is only updated when it still exists (records are kept 30 days, tokens
may live longer); the account of events comes from it. Everything goes through
``gateway.record`` so the callbacks plugin sees the events.

The mailto address names a store entry (set ``unsub_mailto``, member = the 24-character id
of :func:`gateway.unsub_tokens.mailto_id`, data = recipient, sender domain and the latest
MessageId, TTL = the token lifetime): one entry per (sender domain, recipient), refreshed by
every copy that advertises it, so the store grows with the audience, not with the volume.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from gateway import suppression
from gateway.events import Event
from gateway.store.base import StatusUpdate, Store

if TYPE_CHECKING:
    from gateway.server import Gateway

log = structlog.get_logger("gateway.unsubscribe")

MAILTO_KEY = "unsub_mailto"


async def _status(store: Store, message_id: str, recipient: str) -> dict[str, Any] | None:
    rows = await store.query_status(message_id=message_id, recipient=recipient, limit=1)
    return rows[0] if rows else None


def _event(name: str, record: dict[str, Any] | None, *, recipient: str, domain: str, message_id: str,
           useragent: str = "", link: str = "") -> Event:
    return Event(event=name, email=recipient, message_id=message_id, account=record.get("Account") if record else None,
                 from_domain=domain, useragent=useragent[:500], link=link)


async def unsubscribe(gateway: "Gateway", *, recipient: str, domain: str, message_id: str, source: str,
                      useragent: str = "") -> bool:
    """Record the unsubscription; ``True`` when it is new, ``False`` when it was already there."""
    store = gateway.store
    already = await suppression.unsubscribed(store, domain, recipient)
    if not already:
        await suppression.unsubscribe_add(store, domain, recipient, source)
    record = await _status(store, message_id, recipient)
    updates = []
    if record is not None and not record.get("UserUnsubscribed"):
        updates.append(StatusUpdate(message_id, record["ToEmailAddress"], record.get("Account"), {"UserUnsubscribed": True}))
    events = [] if already else [_event("unsubscribe", record, recipient=recipient, domain=domain,
                                        message_id=message_id, useragent=useragent)]
    if updates or events:
        await gateway.record(updates, events)
    log.info("unsubscribe", recipient=recipient, domain=domain, message_id=message_id, source=source, new=not already)
    return not already


async def engagement(gateway: "Gateway", name: str, *, recipient: str, domain: str, message_id: str,
                     useragent: str, link: str = "") -> None:
    """An ``open`` or ``click``: the flag on the status record and one event."""
    field = {"open": "UserOpened", "click": "UserClicked"}[name]
    record = await _status(gateway.store, message_id, recipient)
    updates = []
    if record is not None and not record.get(field):
        updates.append(StatusUpdate(message_id, record["ToEmailAddress"], record.get("Account"), {field: True}))
    await gateway.record(updates, [_event(name, record, recipient=recipient, domain=domain, message_id=message_id,
                                          useragent=useragent, link=link)])


async def remember_mailto(store: Store, ident: str, *, recipient: str, domain: str, message_id: str, ttl: float) -> None:
    await store.set_add(MAILTO_KEY, ident, ttl=ttl, data={"r": recipient, "d": domain, "m": message_id})


async def lookup_mailto(store: Store, ident: str) -> dict[str, Any] | None:
    return await store.set_get(MAILTO_KEY, ident.lower())
