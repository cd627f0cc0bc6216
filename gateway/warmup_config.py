"""``[plugins.warmup]``: egress IP pools, schedules, providers, into frozen settings.

Without a ``[plugins.warmup]`` table :func:`parse` returns ``None`` and the plugin does
nothing at all. Every problem is one line naming the key (exit 78 at start). See
the README (Per-IP warm-up) for the keys; the shapes are::

    [plugins.warmup]
    default_pool = "shared"                 # pool for accounts/domains not mapped elsewhere
    [plugins.warmup.pools.shared]
    schedule = "tencent-standard"           # default schedule of the pool's IPs
    overflow = "triggered"                  # triggered | all | none: who may use warmed IPs
    ips = [{ ip = "203.0.113.10", start = 2026-11-20 }, { ip = "203.0.113.11", warmed = true }]
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config import Config
from gateway.units import parse_duration
from gateway.warmup_providers import Provider, compile_patterns, merge_providers
from gateway.warmup_schedules import BUILTIN_SCHEDULES, DEFAULT_SCHEDULE, Schedule, parse_schedule

PLUGIN = "warmup"
OVERFLOW = ("triggered", "all", "none")
TOP_KEYS = {"pools", "default_pool", "domains", "schedules", "providers", "provider_share", "throttle_patterns",
            "backoff", "recheck", "timezone", "check_local"}


@dataclass(frozen=True)
class EgressIp:
    ip: str
    pool: str
    schedule: Schedule
    start: dt.date | None          # day 1 of warm-up; None with warmed = true
    warmed: bool

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.ip).version


@dataclass(frozen=True)
class Pool:
    name: str
    ips: tuple[EgressIp, ...]
    overflow: str                  # triggered | all | none


@dataclass(frozen=True)
class Settings:
    pools: Mapping[str, Pool]
    default_pool: str | None
    domains: Mapping[str, str]     # sender domain → pool
    accounts: Mapping[str, str]    # account → pool ([accounts.NAME.warmup] pool)
    providers: tuple[Provider, ...]
    provider_share: float
    throttle: tuple[re.Pattern[str], ...]
    backoff: float
    recheck: float
    timezone: dt.tzinfo
    check_local: bool

    @property
    def ips(self) -> list[EgressIp]:
        return [ip for pool in self.pools.values() for ip in pool.ips]

    def share(self, provider: str) -> float:
        for p in self.providers:
            if p.name == provider:
                return p.share if p.share is not None else self.provider_share
        return 1.0                 # "other": no per-provider split

    def pool_for(self, account: str | None, sender: str) -> Pool | None:
        """Sender domain first (most specific), then the account, then the default pool."""
        domain = sender.rpartition("@")[2].lower()
        name = self.domains.get(domain) or (self.accounts.get(account) if account else None) or self.default_pool
        return self.pools.get(name) if name else None


class _Errors(list[str]):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def add(self, key: str, message: str) -> None:
        self.append(f"{self.path}: plugins.warmup.{key}: {message}")


def parse(config: Config) -> tuple[Settings | None, list[str]]:
    """The settings (``None`` without ``[plugins.warmup]``) and one-line errors."""
    table: Mapping[str, Any] = config.plugin_config(PLUGIN)
    accounts = _account_pools(config)
    if PLUGIN not in config.plugin_settings and not accounts[0]:
        return None, accounts[1]
    errors = _Errors(config.path)
    errors.extend(accounts[1])
    for key in sorted(set(table) - TOP_KEYS):
        errors.add(key, "unknown key")
    schedules = _schedules(table.get("schedules"), errors)
    providers, provider_errors = merge_providers(table.get("providers"))
    for error in provider_errors:
        errors.add(*error.split(": ", 1))
    share = table.get("provider_share", 0.5)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        errors.add("provider_share", "must be a number above 0 and at most 1")
        share = 0.5
    throttle, throttle_error = compile_patterns(table.get("throttle_patterns"))
    if throttle_error:
        errors.add(*throttle_error.split(": ", 1))
    backoff = _duration(table, "backoff", "10m", errors)
    recheck = _duration(table, "recheck", "5m", errors)
    zone: dt.tzinfo = dt.timezone.utc
    tz_name = table.get("timezone", "UTC")
    try:
        zone = ZoneInfo(str(tz_name)) if tz_name != "UTC" else dt.timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        errors.add("timezone", f"unknown time zone {tz_name!r} (an IANA name such as \"Asia/Shanghai\")")
    check_local = table.get("check_local", True)
    if not isinstance(check_local, bool):
        errors.add("check_local", "must be true or false")
    pools = _pools(table.get("pools"), schedules, errors)
    default_pool = table.get("default_pool", "default" if "default" in pools else None)
    if default_pool is not None and default_pool not in pools:
        errors.add("default_pool", f"no pool named {default_pool!r}")
    domains = table.get("domains", {})
    if not isinstance(domains, dict) or not all(isinstance(v, str) for v in domains.values()):
        errors.add("domains", "must be a table of sender domain = \"pool\"")
        domains = {}
    for domain, pool in domains.items():
        if pool not in pools:
            errors.add(f"domains.{domain}", f"no pool named {pool!r}")
    for account, pool in accounts[0].items():
        if pool not in pools:
            errors.append(f"{config.path}: accounts.{account}.warmup.pool: no pool named {pool!r}")
    if errors:
        return None, list(errors)
    return Settings(pools=pools, default_pool=default_pool, domains={k.lower(): v for k, v in domains.items()},
                    accounts=accounts[0], providers=providers, provider_share=float(share), throttle=throttle,
                    backoff=backoff, recheck=recheck, timezone=zone, check_local=bool(check_local)), []


def _account_pools(config: Config) -> tuple[dict[str, str], list[str]]:
    pools: dict[str, str] = {}
    errors: list[str] = []
    for name, account in config.accounts.items():
        table = account.settings.get(PLUGIN)
        if table is None:
            continue
        if not isinstance(table, Mapping) or set(table) != {"pool"} or not isinstance(table["pool"], str):
            errors.append(f"{config.path}: accounts.{name}.warmup: must be a table with only pool = \"NAME\"")
            continue
        pools[name] = table["pool"]
    return pools, errors


def _duration(table: Mapping[str, Any], key: str, default: str, errors: _Errors) -> float:
    try:
        return parse_duration(table.get(key, default))
    except ValueError as exc:
        errors.add(key, str(exc))
        return parse_duration(default)


def _schedules(table: object, errors: _Errors) -> dict[str, Schedule]:
    schedules = dict(BUILTIN_SCHEDULES)
    if table is None:
        return schedules
    if not isinstance(table, dict):
        errors.add("schedules", "must be a table of schedule tables")
        return schedules
    for name, spec in table.items():
        parsed = parse_schedule(name, spec)
        if isinstance(parsed, str):
            errors.add(f"schedules.{name}", parsed)
        else:
            schedules[name] = parsed
    return schedules


def _pools(table: object, schedules: Mapping[str, Schedule], errors: _Errors) -> dict[str, Pool]:
    if not isinstance(table, dict) or not table:
        errors.add("pools", "must be a table with at least one pool, e.g. [plugins.warmup.pools.default]")
        return {}
    pools: dict[str, Pool] = {}
    seen: dict[str, str] = {}
    for name, spec in table.items():
        key = f"pools.{name}"
        if not isinstance(spec, dict):
            errors.add(key, "must be a table with ips = [...]")
            continue
        for unknown in sorted(set(spec) - {"ips", "schedule", "overflow"}):
            errors.add(f"{key}.{unknown}", "unknown key")
        schedule = spec.get("schedule", DEFAULT_SCHEDULE)
        if schedule not in schedules:
            errors.add(f"{key}.schedule", f"no schedule named {schedule!r} (built in: {', '.join(BUILTIN_SCHEDULES)})")
            schedule = DEFAULT_SCHEDULE
        overflow = spec.get("overflow", "triggered")
        if overflow not in OVERFLOW:
            errors.add(f"{key}.overflow", f"must be one of {', '.join(OVERFLOW)}")
        ips_spec = spec.get("ips")
        if not isinstance(ips_spec, list) or not ips_spec:
            errors.add(f"{key}.ips", "must be a non-empty array of { ip = \"...\", start = YYYY-MM-DD } or { ip = \"...\", warmed = true }")
            continue
        ips = []
        for index, entry in enumerate(ips_spec):
            parsed = _egress_ip(name, entry, schedules, schedules[schedule], f"{key}.ips[{index}]", errors)
            if parsed is None:
                continue
            if parsed.ip in seen:
                errors.add(f"{key}.ips[{index}]", f"{parsed.ip} is already in pool {seen[parsed.ip]!r} (one pool per IP)")
                continue
            seen[parsed.ip] = name
            ips.append(parsed)
        pools[name] = Pool(name, tuple(ips), overflow if overflow in OVERFLOW else "triggered")
    return pools


def _egress_ip(pool: str, entry: object, schedules: Mapping[str, Schedule], default: Schedule, key: str,
               errors: _Errors) -> EgressIp | None:
    if isinstance(entry, str):
        entry = {"ip": entry, "warmed": True}
    if not isinstance(entry, dict):
        errors.add(key, "must be a table { ip = \"...\", start = YYYY-MM-DD } or an address string (warmed)")
        return None
    for unknown in sorted(set(entry) - {"ip", "start", "warmed", "schedule"}):
        errors.add(f"{key}.{unknown}", "unknown key")
        return None
    try:
        ip = str(ipaddress.ip_address(str(entry.get("ip", ""))))
    except ValueError:
        errors.add(f"{key}.ip", f"not an IPv4 or IPv6 address: {entry.get('ip')!r}")
        return None
    warmed = entry.get("warmed", False)
    start = entry.get("start")
    if isinstance(start, str):
        try:
            start = dt.date.fromisoformat(start)
        except ValueError:
            errors.add(f"{key}.start", f"expected a date YYYY-MM-DD, got {start!r}")
            return None
    if isinstance(start, dt.datetime) or (start is not None and not isinstance(start, dt.date)):
        errors.add(f"{key}.start", "expected a date YYYY-MM-DD")
        return None
    if not isinstance(warmed, bool) or (warmed == (start is not None)):
        errors.add(key, f"{ip}: give either start = YYYY-MM-DD (warming) or warmed = true")
        return None
    schedule_name = entry.get("schedule")
    schedule = default
    if schedule_name is not None:
        if schedule_name not in schedules:
            errors.add(f"{key}.schedule", f"no schedule named {schedule_name!r}")
            return None
        schedule = schedules[schedule_name]
    return EgressIp(ip=ip, pool=pool, schedule=schedule, start=start, warmed=warmed)


def local_errors(config: Config, settings: Settings) -> list[str]:
    """Egress IPs not assigned to a local interface: binding to them fails (EADDRNOTAVAIL)."""
    if not settings.check_local:
        return []
    errors = []
    for egress in settings.ips:
        family = socket.AF_INET6 if egress.family == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((egress.ip, 0))
        except OSError as exc:
            errors.append(f"{config.path}: plugins.warmup.pools.{egress.pool}: {egress.ip} is not an address of this "
                          f"host ({exc.strerror}); assign it to an interface or set check_local = false")
    return errors
