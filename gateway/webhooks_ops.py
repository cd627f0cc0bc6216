"""Operator actions on the callback outbox, shared by the CLI (``ses-gateway events``) and the
admin API (``/v1/events``): list, replay, re-enable a URL after 410, count by state.

They work on the store alone, so the CLI can open the SQLite file next to a running gateway;
the gateway's sender picks changed rows up at its next poll.
"""
from __future__ import annotations

from typing import Any

from gateway.store.base import OutboxItem, Store
from gateway.webhooks_sender import DISABLED_KEY
from gateway.webhooks_settings import Settings

STATES = ("pending", "sent", "failed", "disabled", "recorded")
PAGE = 1000


def describe(item: OutboxItem, settings: Settings | None = None) -> dict[str, Any]:
    target = settings.target(item.event) if settings is not None else None
    event = item.event
    return {"Seq": item.seq, "Id": event.id, "Event": event.event, "Email": event.email, "MessageId": event.message_id,
            "Account": event.account, "Timestamp": int(event.timestamp), "State": item.state,
            "Attempts": item.attempts, "NextAttempt": int(item.next_attempt), "LastError": item.last_error,
            "Url": target.url if target else None}


async def scan(store: Store, *, state: str | None = None, limit: int | None = None, after_seq: int = 0) -> list[OutboxItem]:
    """Rows in outbox order, paging through the store."""
    found: list[OutboxItem] = []
    while limit is None or len(found) < limit:
        page = await store.outbox(state=state, after_seq=after_seq,
                                  limit=PAGE if limit is None else min(PAGE, limit - len(found)))
        found.extend(page)
        if len(page) < PAGE:
            break
        after_seq = page[-1].seq
    return found


async def find(store: Store, ident: str) -> OutboxItem | None:
    """One row by event id (``evt_…``) or outbox sequence number."""
    if ident.isdigit():
        page = await store.outbox(after_seq=int(ident) - 1, limit=1)
        return page[0] if page and page[0].seq == int(ident) else None
    for item in await scan(store):
        if item.event.id == ident:
            return item
    return None


async def requeue(store: Store, items: list[OutboxItem], note: str) -> int:
    """Back to pending, due now, with a fresh retry schedule."""
    for item in items:
        await store.outbox_update(item.seq, state="pending", attempts=0, next_attempt=0, last_error=note)
    return len(items)


async def replay(store: Store, ident: str | None = None, *, failed: bool = False) -> int:
    """Post one event again (any state) or every failed one; returns how many were queued."""
    if failed:
        return await requeue(store, await scan(store, state="failed"), "replayed")
    item = await find(store, ident or "")
    return await requeue(store, [item], "replayed") if item else 0


async def enable_url(store: Store, settings: Settings, name: str) -> tuple[list[str], int]:
    """Re-enable a URL disabled by 410 (``name`` is the URL or an account); its disabled
    events are queued again. Returns the URLs enabled and the number of events requeued."""
    if name in settings.accounts:
        account = settings.accounts[name]
        urls = {u for u in [account.url, *account.sender_urls.values()] if u}
    else:
        urls = {name}
    enabled = [url for url in sorted(urls) if await store.set_remove(DISABLED_KEY, url)]
    items = [i for i in await scan(store, state="disabled") if (t := settings.target(i.event)) and t.url in urls]
    return enabled, await requeue(store, items, "URL re-enabled")


async def disabled_urls(store: Store) -> list[tuple[str, dict[str, Any]]]:
    return [(url, data) for url, data, _ in await store.set_members(DISABLED_KEY, limit=10_000)]


async def count_states(store: Store, states: tuple[str, ...] = ("pending", "failed", "disabled"),
                       cap: int = 100_000) -> dict[str, int]:
    """Rows per state (the pending count also gives ``retrying``: pending with attempts)."""
    counts: dict[str, int] = {}
    for state in states:
        items = await scan(store, state=state, limit=cap)
        counts[state] = len(items)
        if state == "pending":
            counts["retrying"] = sum(1 for i in items if i.attempts > 0)
    return counts
