"""Counted SES limits in the state store (DESIGN §4): store keys, atomic reservations, the
frequency block, the blocklist-share pause and the send-rate window.

Counts are of *accepted recipients*, taken atomically with ``store.incr(..., limit=...)`` at
RCPT, so two sessions (on one node or several sharing a store) cannot both take the last
slot. Keys (all backend-neutral counters and sets):

- ``ses:daily:<account>:<day>``       accepted recipients of the day (policy time zone)
- ``ses:blhits:<account>:<day>``      recipients refused for the blocklist + hard bounces
- ``ses:rcpt:<account>:<rcpt>:<hour>`` accepted mails to one address in one clock hour
- ``ses:rate:<account>:<window>``     deliveries started in one send-rate window
- set ``ses:freqblock:<account>``      addresses blocked until 00:00, data ``{"until"}``

Blocklist, unsubscribes and paused accounts use :mod:`gateway.suppression`'s keys.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import structlog

from gateway import suppression
from gateway.session import StashKey
from gateway.ses_settings import GlobalSettings, PolicySettings, day_of, next_midnight
from gateway.store.base import Store

log = structlog.get_logger("gateway.ses_policy")

BACKLOG: StashKey[tuple[float, dict[str, int]]] = StashKey()
BACKLOG_CACHE = 0.25           # seconds a backlog scan is reused
DAY_TTL = 2 * 86400.0          # counters outlive their day (time zones), then expire
HOUR = 3600.0


def daily_key(account: str, day: str) -> str:
    return f"ses:daily:{account}:{day}"


def hits_key(account: str, day: str) -> str:
    return f"ses:blhits:{account}:{day}"


def recipient_key(account: str, recipient: str, now: float) -> str:
    return f"ses:rcpt:{account}:{recipient.lower()}:{int(now // HOUR)}"


def freqblock_key(account: str) -> str:
    return f"ses:freqblock:{account}"


@dataclass(frozen=True)
class Reservation:
    """A count taken at RCPT, given back when the transaction does not end in a queued message."""

    key: str
    ttl: float


async def reserve(store: Store, key: str, limit: int, ttl: float) -> Reservation | None:
    added, _ = await store.incr(key, 1, ttl=ttl, limit=limit)
    return Reservation(key, ttl) if added else None


async def refund(store: Store, reservations: list[Reservation]) -> None:
    for item in reservations:
        # Never below zero: the window may have expired and restarted meanwhile.
        if await store.get_counter(item.key) > 0:
            await store.incr(item.key, -1, ttl=item.ttl)


async def frequency_blocked(store: Store, account: str, recipient: str, now: float) -> float | None:
    """The time the address's frequency block ends, or None."""
    entry = await store.set_get(freqblock_key(account), recipient.lower())
    if entry is None or float(entry.get("until", 0)) <= now:
        return None
    return float(entry["until"])


async def block_until_midnight(store: Store, account: str, recipient: str, now: float, timezone: str) -> float:
    until = next_midnight(now, timezone)
    # The store's TTL runs on its own clock; the "until" in the data is what the policy checks.
    await store.set_add(freqblock_key(account), recipient.lower(), ttl=max(until - now, 1.0) + 60,
                        data={"until": until})
    return until


def blocklisted(entry: dict[str, Any] | None, now: float, ttl: float) -> bool:
    """A blocklist entry counts until ``added + ttl`` on the policy clock (and the store drops
    it at its own TTL)."""
    if entry is None:
        return False
    added = entry.get("added")
    return not isinstance(added, (int, float)) or now < added + ttl


async def count_hit(store: Store, account: str, settings: PolicySettings, glob: GlobalSettings, now: float) -> bool:
    """Count one blocklist hit for the account today; pause it when the share reaches the
    threshold at the minimum volume. Returns True when this call paused it."""
    day = day_of(now, glob.timezone)
    _, hits = await store.incr(hits_key(account, day), 1, ttl=DAY_TTL)
    sends = await store.get_counter(daily_key(account, day)) + hits
    if sends < settings.pause_min_volume or hits < settings.pause_blocklist_share * sends - 1e-9:
        return False
    if await suppression.account_paused(store, account) is not None:
        return False
    reason = (f"FailedOperation.HighRejectionRate: {hits} of {sends} sends on {day} hit the blocklist "
              f"({hits / sends:.1%} >= {settings.pause_blocklist_share:.1%})")
    await suppression.pause_account(store, account, reason)
    log.warning("account paused", account=account, hits=hits, sends=sends, day=day)
    return True


def rate_window(rate: float) -> tuple[float, int]:
    """(window seconds, deliveries per window) for a rate in deliveries per second: 1 s windows
    for rates of at least 1/s, else one delivery per 1/rate seconds."""
    if rate >= 1:
        return 1.0, max(1, int(math.floor(rate)))
    return 1.0 / rate, 1


async def take_send_slot(store: Store, account: str, rate: float, now: float) -> float | None:
    """Take one delivery slot in the current window; None when taken, else the window's end."""
    window, capacity = rate_window(rate)
    index = int(now // window)
    added, _ = await store.incr(f"ses:rate:{account}:{index}", 1, ttl=window * 2 + 5, limit=capacity)
    return None if added else (index + 1) * window


async def counters(store: Store, account: str, settings: PolicySettings, glob: GlobalSettings, now: float) -> dict[str, Any]:
    """Today's counters for the admin API and CLI."""
    day = day_of(now, glob.timezone)
    sent = await store.get_counter(daily_key(account, day))
    hits = await store.get_counter(hits_key(account, day))
    return {"Day": day, "Timezone": glob.timezone, "SentToday": sent, "DailyLimit": settings.daily_limit,
            "RemainingToday": max(settings.daily_limit - sent, 0), "BlocklistHitsToday": hits,
            "BlocklistShare": round(hits / (sent + hits), 4) if sent + hits else 0.0}


def limits_of(settings: PolicySettings) -> dict[str, Any]:
    return {"RecipientHourlyLimit": settings.recipient_hourly_limit, "DailyLimit": settings.daily_limit,
            "SendRatePerSecond": settings.send_rate, "MaxBacklog": settings.max_backlog,
            "MaxRecipients": settings.max_recipients, "MaxSubjectLength": settings.max_subject_length,
            "PauseBlocklistShare": settings.pause_blocklist_share, "PauseMinVolume": settings.pause_min_volume,
            "RequireTemplate": settings.require_template}


def backlog(gateway: Any, account: str) -> int:
    """Recipients of the account queued on this node and not yet final. The scan of the
    scheduler is reused for BACKLOG_CACHE seconds (RCPT checks come in bursts)."""
    cached = gateway.stash.get(BACKLOG, None)
    if cached is None or time.monotonic() - cached[0] > BACKLOG_CACHE:
        counts: dict[str, int] = {}
        for message in gateway.scheduler.messages.values():
            if message.account is not None:
                counts[message.account] = counts.get(message.account, 0) + sum(1 for r in message.recipients if not r.final)
        cached = (time.monotonic(), counts)
        gateway.stash[BACKLOG] = cached
    return int(cached[1].get(account, 0))


def backlog_changed(gateway: Any) -> None:
    gateway.stash[BACKLOG] = (float("-inf"), {})
