"""warmup: per-IP warm-up — egress IP pools with schedules, provider budgets and real source binding.

Without a ``[plugins.warmup]`` table (and no ``[accounts.NAME.warmup]``) every hook returns
at once: the plugin is built in and always loaded, but does nothing unless configured.

Hooks and their order in one delivery:

* ``gateway_delivery_gate`` (trylast: other gates such as send-rate pacing hold first, so
  no budget is taken for a delivery that another gate stops). Finds the delivery's pool
  (sender domain → account → ``default_pool``), the recipient's mailbox provider from its MX
  hosts (the SMTP transport's cached :class:`~gateway.transports.mx.MxResolver`), and takes
  one unit of budget from a warming IP with room today, this hour and for that provider —
  chosen at random weighted by the room left. When none has room, triggered mail
  (``trigger_type == 1``) goes out through a warmed IP of the pool (``overflow =
  "triggered"``, the default; ``"all"`` lets batch mail overflow too, ``"none"`` nothing);
  batch mail gets a :class:`~gateway.delivery.Hold` until the next hour or day boundary
  (DeliverStatus 8, "held: warm-up budget …"): it never bounces for warm-up alone, the
  core's ``max_lifetime`` still applies. The unit is kept in ``delivery.stash``.
* ``gateway_source_address``: returns the reserved IP; the SMTP transport binds it
  (aiosmtplib ``source_address``), the core logs it and puts it in events.
* ``gateway_delivery_result``: a unit whose attempt did not leave from the reserved IP is
  given back; a throttling reply pauses that IP for that provider (``backoff``, 10 min as
  Tencent's ``TemporaryBlocked``) and holds that provider's level for the next day. The IP
  goes into the status record as ``SourceAddress``.
* ``gateway_validate_config``: the whole table, and that each IP is local (exit 78 unless
  ``check_local = false``). ``gateway_startup``/``gateway_reload``: parsed settings.
* ``gateway_metrics`` (sent and caps per IP) and ``gateway_http_routes`` (``GET /v1/warmup``).

Config keys: see gateway/warmup_config.py and the README (Per-IP warm-up).
"""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from gateway import hookimpl
from gateway.delivery import Hold
from gateway.http import admin, gateway_of, operation
from gateway.session import StashKey
from gateway.transports.mx import MxError
from gateway.warmup_budget import Budgets, Reservation, clock_of
from gateway.warmup_config import EgressIp, Pool, Settings, local_errors, parse
from gateway.warmup_providers import is_throttling, recognise

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.delivery import Delivery
    from gateway.server import Gateway
    from gateway.transports.base import AttemptResult, Route

log = structlog.get_logger("gateway.warmup")

SETTINGS: StashKey[Settings | None] = StashKey()
RESERVED = "warmup"                  # delivery.stash key: the Reservation from the gate
DESTINATION = "warmup.destination"   # delivery.stash key: (provider, address families)


# --------------------------------------------------------------------------- lifecycle


@hookimpl
def gateway_validate_config(config: "Config") -> list[str] | None:
    settings, errors = parse(config)
    if settings is not None and not errors:
        errors = local_errors(config, settings)
    return errors or None


@hookimpl
def gateway_startup(gateway: "Gateway") -> None:
    gateway.stash[SETTINGS] = parse(gateway.config)[0]


@hookimpl
def gateway_reload(gateway: "Gateway") -> None:
    gateway.stash[SETTINGS] = parse(gateway.config)[0]


def _active(gateway: "Gateway") -> Settings | None:
    if gateway.config.delivery.transport == "tencent-ses":
        return None                  # Tencent warms its own IPs
    return gateway.stash.get(SETTINGS, None)


# --------------------------------------------------------------------------- choice


async def _destination(gateway: "Gateway", settings: Settings, delivery: "Delivery") -> tuple[str, set[int] | None] | None:
    """(provider, address families the MX hosts have) — None when MX resolution fails for
    direct delivery: the transport meets the same (cached) error without connecting."""
    cached: tuple[str, set[int] | None] | None = delivery.stash.get(DESTINATION)
    if cached is not None:
        return cached
    transport = gateway.transports.get("smtp")
    resolver = getattr(transport, "resolver", None)
    direct = gateway.config.delivery.transport == "mx"
    hosts: list[tuple[str, list[str]]] | None = None
    if resolver is not None:
        try:
            hosts = await resolver.resolve(delivery.domain)
        except MxError:
            if direct:
                return None
    provider = recognise(settings.providers, [h for h, _ in hosts] if hosts else None, delivery.domain)
    families = {6 if ":" in a else 4 for _, addresses in hosts for a in addresses} if hosts and direct else None
    delivery.stash[DESTINATION] = (provider, families)
    return provider, families


async def choose(budgets: Budgets, pool: Pool, provider: str, families: set[int] | None, now: float,
                 triggered: bool) -> Reservation | tuple[float, str]:
    """A reservation, or (when budget may free up, why) for a hold."""
    usable = [ip for ip in pool.ips if families is None or ip.family in families]
    warming = [ip for ip in usable if budgets.warming(ip, now)]
    warm = [ip for ip in usable if budgets.warm(ip, now)]
    wake: list[float] = [budgets.start_of(ip) for ip in usable if budgets.day_of(ip, now) < 1 and not ip.warmed]
    weighted: list[tuple[EgressIp, Any, int]] = []
    for egress in warming:
        paused = await budgets.paused_until(egress.ip, provider, now)
        if paused is not None:
            wake.append(paused)
            continue
        caps = await budgets.caps(egress, provider, now)
        usage = await budgets.usage(egress.ip, provider, now)
        room = budgets.room(caps, usage)
        if room is None or room > 0:
            weighted.append((egress, caps, room or 1))
        elif caps.hourly is not None and usage.hourly >= caps.hourly and \
                (caps.daily is None or usage.daily < caps.daily) and (caps.provider is None or usage.provider < caps.provider):
            wake.append(budgets.next_hour(now))
        else:
            wake.append(budgets.next_day(now))
    while weighted:
        pick = random.choices(weighted, weights=[room for _, _, room in weighted])[0]
        reservation = await budgets.reserve(pick[0], provider, pick[1], now)
        if reservation is not None:
            return reservation
        weighted.remove(pick)        # another worker or node took the last unit: next one
    overflow = not warming or pool.overflow == "all" or (pool.overflow == "triggered" and triggered)
    if overflow and warm:
        open_ips = []
        for egress in warm:
            paused = await budgets.paused_until(egress.ip, provider, now)
            if paused is None:
                open_ips.append(egress)
            else:
                wake.append(paused)
        if open_ips:
            reservation = await budgets.reserve(random.choice(open_ips), provider, budgets.unlimited, now)
            assert reservation is not None
            return reservation
    if not usable:
        return now + budgets.settings.recheck, f"pool {pool.name} has no egress IP of the recipient's address family"
    until = min(wake, default=budgets.next_day(now))
    boundary = "next hour" if until == budgets.next_hour(now) else "next day" if until == budgets.next_day(now) else "pause ends"
    return until, f"pool {pool.name} has no budget for {provider} until the {boundary}" if boundary != "pause ends" \
        else f"pool {pool.name} is paused for {provider} (throttled)"


@hookimpl(trylast=True)
async def gateway_delivery_gate(gateway: "Gateway", delivery: "Delivery") -> Hold | None:
    settings = _active(gateway)
    if settings is None:
        return None
    pool = settings.pool_for(delivery.account, delivery.sender)
    if pool is None:
        return None
    budgets = Budgets(gateway.store, settings)
    unused: Reservation | None = delivery.stash.pop(RESERVED, None)
    if unused is not None:           # taken by an earlier gate pass that never reached a result
        await budgets.release(unused)
    destination = await _destination(gateway, settings, delivery)
    if destination is None:
        return None
    provider, families = destination
    clock = clock_of(gateway.stash)
    now = clock()
    choice = await choose(budgets, pool, provider, families, now, delivery.meta.get("trigger_type") == 1)
    if isinstance(choice, Reservation):
        delivery.stash[RESERVED] = choice
        log.debug("warm-up source chosen", message_id=delivery.message_id, recipient=delivery.recipient,
                  pool=pool.name, provider=provider, source=choice.ip, warmed=choice.warmed)
        return None
    until, why = choice
    # Hold in wall-clock time; re-check at least every `recheck` (reloads, clock changes).
    wait = max(min(until - now, settings.recheck), 0.05)
    log.debug("warm-up hold", message_id=delivery.message_id, recipient=delivery.recipient, reason=why, wait=round(wait, 1))
    return Hold(until=time.time() + wait, reason=f"warm-up budget: {why}")


@hookimpl
def gateway_source_address(delivery: "Delivery", route: "Route") -> str | None:
    reservation: Reservation | None = delivery.stash.get(RESERVED)
    if reservation is None or route.transport != "smtp":
        return None
    return reservation.ip


# --------------------------------------------------------------------------- feedback


@hookimpl
async def gateway_delivery_result(gateway: "Gateway", delivery: "Delivery", result: "AttemptResult") -> None:
    reservation: Reservation | None = delivery.stash.pop(RESERVED, None)
    settings = gateway.stash.get(SETTINGS, None)
    if reservation is None or settings is None:
        return
    budgets = Budgets(gateway.store, settings)
    if result.source_address != reservation.ip:
        await budgets.release(reservation)    # the attempt did not leave from this IP
        return
    # (The scheduler writes SourceAddress into the status record for every attempt.)
    if not is_throttling(settings.throttle, result.code, result.enhanced, result.text):
        return
    egress = next((ip for ip in settings.ips if ip.ip == reservation.ip), None)
    if egress is None:
        return
    now = clock_of(gateway.stash)()
    await budgets.pause(egress, reservation.provider, now, result.describe())
    log.warning("warm-up ip throttled", source=egress.ip, provider=reservation.provider, reply=result.describe(),
                backoff=settings.backoff)


# --------------------------------------------------------------------------- visibility


async def _status(gateway: "Gateway") -> list[dict[str, Any]]:
    settings = gateway.stash.get(SETTINGS, None)
    if settings is None:
        return []
    return await Budgets(gateway.store, settings).status(clock_of(gateway.stash)())


@hookimpl
async def gateway_metrics(gateway: "Gateway") -> list[Any] | None:
    if gateway.stash.get(SETTINGS, None) is None:
        return None
    from prometheus_client.core import GaugeMetricFamily

    sent = GaugeMetricFamily("sesgw_warmup_sent_today", "Mails sent today from an egress IP", labels=["ip", "pool"])
    cap = GaugeMetricFamily("sesgw_warmup_daily_cap", "Today's warm-up cap of an egress IP (absent when warm)",
                            labels=["ip", "pool"])
    day = GaugeMetricFamily("sesgw_warmup_day", "Day of warm-up of an egress IP (0 = not started or warmed)",
                            labels=["ip", "pool"])
    provider_sent = GaugeMetricFamily("sesgw_warmup_provider_sent_today", "Mails sent today from an IP to a provider",
                                      labels=["ip", "provider"])
    provider_cap = GaugeMetricFamily("sesgw_warmup_provider_cap", "Today's cap of an IP for a provider",
                                     labels=["ip", "provider"])
    paused = GaugeMetricFamily("sesgw_warmup_paused", "1 while an IP is paused for a provider after throttling",
                               labels=["ip", "provider"])
    for row in await _status(gateway):
        labels = [row["ip"], row["pool"]]
        sent.add_metric(labels, row["sent_today"])
        day.add_metric(labels, row["day"] if row["state"] == "warming" else 0)
        if row["daily_cap"] is not None:
            cap.add_metric(labels, row["daily_cap"])
        for name, usage in row["providers"].items():
            provider_sent.add_metric([row["ip"], name], usage["sent"])
            if usage["cap"] is not None:
                provider_cap.add_metric([row["ip"], name], usage["cap"])
            paused.add_metric([row["ip"], name], 1 if usage["paused_until"] else 0)
    return [sent, cap, day, provider_sent, provider_cap, paused]


@operation("get", "/v1/warmup", summary="Warm-up state per egress IP: day, caps, use per provider, pauses, next level")
@admin
async def _get_warmup(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    return web.json_response({"ips": await _status(gateway), "configured": gateway.stash.get(SETTINGS, None) is not None})


@hookimpl
def gateway_http_routes(gateway: "Gateway") -> list[Any] | None:
    return [web.get("/v1/warmup", _get_warmup)]
