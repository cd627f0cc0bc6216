"""Suppression lists in the state store: the global hard-bounce blocklist, per-sender-domain
unsubscribes, and paused accounts. One place for the store keys, so the policy plugin, the
unsubscribe plugin, the CLI and the admin API agree.

- blocklist: set ``blocklist``, member = lower-case address, TTL 14 days (SES), data
  ``{"reason", "added"}``; applies to every account of the gateway.
- unsubscribes: set ``unsub:<sender domain>``, member = lower-case recipient, no TTL.
- paused accounts: set ``paused``, member = account name, data ``{"reason", "since"}``.
"""
from __future__ import annotations

import time
from typing import Any

from gateway.store.base import Store

BLOCKLIST_TTL = 14 * 86400


async def blocklist_add(store: Store, address: str, reason: str, *, ttl: float = BLOCKLIST_TTL) -> None:
    await store.set_add("blocklist", address.lower(), ttl=ttl, data={"reason": reason[:300], "added": int(time.time())})


async def blocklist_get(store: Store, address: str) -> dict[str, Any] | None:
    return await store.set_get("blocklist", address.lower())


async def blocklist_remove(store: Store, address: str) -> bool:
    return await store.set_remove("blocklist", address.lower())


async def blocklist_list(store: Store, *, prefix: str = "", offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    rows = await store.set_members("blocklist", prefix=prefix.lower(), offset=offset, limit=limit)
    return [{"email": member, "expires": int(expires) if expires else None, **data} for member, data, expires in rows]


async def unsubscribe_add(store: Store, sender_domain: str, recipient: str, source: str) -> None:
    await store.set_add(f"unsub:{sender_domain.lower()}", recipient.lower(), data={"source": source, "added": int(time.time())})


async def unsubscribed(store: Store, sender_domain: str, recipient: str) -> bool:
    return await store.set_get(f"unsub:{sender_domain.lower()}", recipient.lower()) is not None


async def unsubscribe_remove(store: Store, sender_domain: str, recipient: str) -> bool:
    return await store.set_remove(f"unsub:{sender_domain.lower()}", recipient.lower())


async def unsubscribe_list(store: Store, sender_domain: str, *, prefix: str = "", offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    rows = await store.set_members(f"unsub:{sender_domain.lower()}", prefix=prefix.lower(), offset=offset, limit=limit)
    return [{"domain": sender_domain.lower(), "email": member, **data} for member, data, _ in rows]


async def pause_account(store: Store, account: str, reason: str) -> None:
    await store.set_add("paused", account, data={"reason": reason[:300], "since": int(time.time())})


async def account_paused(store: Store, account: str) -> dict[str, Any] | None:
    return await store.set_get("paused", account)


async def resume_account(store: Store, account: str) -> bool:
    return await store.set_remove("paused", account)
