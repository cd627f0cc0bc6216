"""Warm-up budgets in the state store: per IP per day, per hour and per mailbox provider.

Every count lives in the shared store (DESIGN §6), so several gateway nodes on one store
spend one budget per IP. A unit is taken with atomic ``incr(limit=cap)`` calls — day, hour,
provider in that order, the earlier ones given back when a later one is full — so racing
workers or nodes can never push an IP past a cap; a lost race only costs a retry.

Keys (backend-neutral strings)::

    warmup:d:<YYYY-MM-DD>:<ip>             mails today (local date of [plugins.warmup] timezone)
    warmup:h:<hour number>:<ip>            mails this hour (UTC hour since the epoch)
    warmup:p:<YYYY-MM-DD>:<ip>:<provider>  mails today to one provider
    set warmup:paused  member <ip>|<provider>  {"until": t, "reply": ...}   throttled: backoff
    set warmup:held    member <ip>|<provider>  {"day": n, "through": date}  level not raised

Time comes from a clock in ``gateway.stash[CLOCK]`` (``time.time`` by default) so tests can
move to the next hour or day without sleeping; store TTLs only clean up old keys.
"""
from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from gateway.session import StashKey
from gateway.store.base import Store
from gateway.warmup_config import EgressIp, Settings
from gateway.warmup_providers import OTHER

CLOCK: StashKey[Callable[[], float]] = StashKey()
PAUSED = "warmup:paused"
HELD = "warmup:held"
DAY_TTL = 3 * 86400.0
HOUR_TTL = 2 * 3600.0


@dataclass(frozen=True)
class Caps:
    """A unit may be taken while every cap that is not None has room."""

    daily: int | None
    hourly: int | None
    provider: int | None


@dataclass(frozen=True)
class Usage:
    daily: int
    hourly: int
    provider: int


@dataclass(frozen=True)
class Reservation:
    """One unit taken for one delivery (kept in ``delivery.stash`` from gate to result)."""

    ip: str
    provider: str
    date: str
    hour: int
    warmed: bool


class Budgets:
    unlimited = Caps(None, None, None)

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # -- calendar ------------------------------------------------------------------------------------
    def today(self, now: float) -> dt.date:
        return dt.datetime.fromtimestamp(now, self.settings.timezone).date()

    def next_day(self, now: float) -> float:
        tomorrow = self.today(now) + dt.timedelta(days=1)
        return dt.datetime.combine(tomorrow, dt.time(), self.settings.timezone).timestamp()

    @staticmethod
    def next_hour(now: float) -> float:
        return (math.floor(now / 3600) + 1) * 3600.0

    def day_of(self, egress: EgressIp, now: float) -> int:
        """Day of warm-up: 1 on the start date, 0 before it."""
        if egress.start is None:
            return 0
        return max((self.today(now) - egress.start).days + 1, 0)

    def start_of(self, egress: EgressIp) -> float:
        """When day 1 begins (local midnight of the start date)."""
        start = egress.start or dt.date(1970, 1, 1)
        return dt.datetime.combine(start, dt.time(), self.settings.timezone).timestamp()

    def warming(self, egress: EgressIp, now: float) -> bool:
        """Inside its schedule (started, not past the last day)."""
        day = self.day_of(egress, now)
        return not egress.warmed and 1 <= day <= egress.schedule.days

    def warm(self, egress: EgressIp, now: float) -> bool:
        return egress.warmed or self.day_of(egress, now) > egress.schedule.days

    # -- caps and usage --------------------------------------------------------------------------------
    async def held_day(self, ip: str, provider: str, now: float) -> int | None:
        """The level a throttled provider stays at (not raised) today, if any."""
        data = await self.store.set_get(HELD, f"{ip}|{provider}")
        if not data or str(self.today(now)) > str(data.get("through", "")):
            return None
        return int(data["day"])

    async def caps(self, egress: EgressIp, provider: str, now: float) -> Caps:
        if self.warm(egress, now):
            return Caps(None, None, None)
        day = self.day_of(egress, now)
        daily, hourly = egress.schedule.daily_cap(day), egress.schedule.hourly_cap(day)
        provider_base = daily
        held = await self.held_day(egress.ip, provider, now)
        if held is not None and held < day:
            provider_base = egress.schedule.daily_cap(held)
        share = self.settings.share(provider)
        provider_cap = None
        if provider_base is not None and (share < 1.0 or provider_base != daily):
            provider_cap = max(1, math.floor(provider_base * share))
        return Caps(daily, hourly, provider_cap)

    def keys(self, ip: str, provider: str, now: float) -> tuple[str, str, str]:
        date, hour = str(self.today(now)), math.floor(now / 3600)
        return f"warmup:d:{date}:{ip}", f"warmup:h:{hour}:{ip}", f"warmup:p:{date}:{ip}:{provider}"

    async def usage(self, ip: str, provider: str, now: float) -> Usage:
        day, hour, prov = self.keys(ip, provider, now)
        return Usage(await self.store.get_counter(day), await self.store.get_counter(hour), await self.store.get_counter(prov))

    @staticmethod
    def room(caps: Caps, usage: Usage) -> int | None:
        """Units left under every cap; ``None`` = unlimited."""
        left = [cap - used for cap, used in ((caps.daily, usage.daily), (caps.hourly, usage.hourly),
                                            (caps.provider, usage.provider)) if cap is not None]
        return max(min(left), 0) if left else None

    async def reserve(self, egress: EgressIp, provider: str, caps: Caps, now: float) -> Reservation | None:
        """Take one unit atomically under every cap, or nothing."""
        keys = self.keys(egress.ip, provider, now)
        limits = (caps.daily, caps.hourly, caps.provider)
        ttls = (DAY_TTL, HOUR_TTL, DAY_TTL)
        taken: list[str] = []
        for key, limit, ttl in zip(keys, limits, ttls):
            added, _ = await self.store.incr(key, 1, ttl=ttl, limit=limit)
            if not added:
                for done in taken:
                    await self.store.incr(done, -1)
                return None
            taken.append(key)
        return Reservation(egress.ip, provider, str(self.today(now)), math.floor(now / 3600), self.warm(egress, now))

    async def release(self, reservation: Reservation) -> None:
        """Give back a unit whose attempt never happened (routing failed before connecting)."""
        hour_key = f"warmup:h:{reservation.hour}:{reservation.ip}"
        for key in (f"warmup:d:{reservation.date}:{reservation.ip}", hour_key,
                    f"warmup:p:{reservation.date}:{reservation.ip}:{reservation.provider}"):
            if await self.store.get_counter(key) > 0:
                await self.store.incr(key, -1)

    # -- throttling feedback -----------------------------------------------------------------------------
    async def paused_until(self, ip: str, provider: str, now: float) -> float | None:
        data = await self.store.set_get(PAUSED, f"{ip}|{provider}")
        if not data or float(data.get("until", 0)) <= now:
            return None
        return float(data["until"])

    async def pause(self, egress: EgressIp, provider: str, now: float, reply: str) -> float:
        """Pause ``egress`` for ``provider`` for the backoff, and hold the provider's level:
        tomorrow's budget for it stays at today's instead of stepping up."""
        until = now + self.settings.backoff
        await self.store.set_add(PAUSED, f"{egress.ip}|{provider}", ttl=self.settings.backoff + 60,
                                 data={"until": until, "reply": reply[:200]})
        day = self.day_of(egress, now)
        if self.warming(egress, now):
            held = await self.held_day(egress.ip, provider, now)
            through = self.today(now) + dt.timedelta(days=1)
            await self.store.set_add(HELD, f"{egress.ip}|{provider}", ttl=DAY_TTL,
                                     data={"day": min(day, held) if held else day, "through": str(through)})
        return until

    # -- visibility ------------------------------------------------------------------------------------
    async def status(self, now: float) -> list[dict[str, Any]]:
        """Per IP: day, caps, use per provider, paused providers, the next level."""
        rows = []
        providers = [p.name for p in self.settings.providers] + [OTHER]
        for egress in self.settings.ips:
            day = self.day_of(egress, now)
            base = await self.caps(egress, OTHER, now)
            day_key, hour_key, _ = self.keys(egress.ip, OTHER, now)
            per_provider: dict[str, Any] = {}
            for name in providers:
                caps = await self.caps(egress, name, now)
                sent = await self.store.get_counter(self.keys(egress.ip, name, now)[2])
                paused = await self.paused_until(egress.ip, name, now)
                held = await self.held_day(egress.ip, name, now)
                if sent or paused or held or caps.provider is not None:
                    per_provider[name] = {"sent": sent, "cap": caps.provider if caps.provider is not None else caps.daily,
                                          "paused_until": _iso(paused) if paused else None,
                                          "held_at_day": held}
            rows.append({
                "ip": egress.ip, "pool": egress.pool, "schedule": egress.schedule.name,
                "state": "warm" if self.warm(egress, now) else "warming" if day >= 1 else "not started",
                "start": str(egress.start) if egress.start else None, "day": day,
                "daily_cap": base.daily, "hourly_cap": base.hourly,
                "sent_today": await self.store.get_counter(day_key),
                "sent_this_hour": await self.store.get_counter(hour_key),
                "providers": per_provider,
                "paused": sorted(n for n, p in per_provider.items() if p["paused_until"]),
                "next_level": self.next_level(egress, now),
            })
        return rows

    def next_level(self, egress: EgressIp, now: float) -> dict[str, Any] | None:
        if self.warm(egress, now):
            return None
        day = self.day_of(egress, now)
        starts = self.next_day(now) if day >= 1 else self.start_of(egress)
        following = day + 1
        return {"day": following, "starts": _iso(starts), "daily_cap": egress.schedule.daily_cap(following),
                "hourly_cap": egress.schedule.hourly_cap(following)}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def clock_of(stash: Any) -> Callable[[], float]:
    clock: Callable[[], float] = stash.get(CLOCK, time.time)
    return clock
