"""Settings of the SES policy (DESIGN §4): global ``[plugins.ses_policy]`` defaults, per-account
``[accounts.NAME.ses_policy]`` overrides, validation, and the policy clock.

The defaults are the documented Tencent Cloud SES limits (ses-semantics.md §1.5, §7):
10 mails per recipient per hour, 300,000 per account per day, 20 requests/s, 50 recipients
per request, subjects up to 998 characters, hard bounces blocklisted for 14 days. The 8 %
pause threshold is this project's rule (DESIGN §4; Tencent documents 9 %/11 % invalid-address
thresholds with the same 300-send minimum volume).

The rules apply to every account, with these defaults, unless ``enabled = false`` (globally in
``[plugins.ses_policy]`` or per account in ``[accounts.NAME.ses_policy]``): SES enforces its
limits always. The header contract (``X-SES-*``) and templates work regardless.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.session import StashKey
from gateway.units import parse_duration, parse_rate

if TYPE_CHECKING:
    from gateway.config import Config

PLUGIN = "ses_policy"

Clock = Callable[[], float]
CLOCK: StashKey[Clock] = StashKey()
"""``gateway.stash[CLOCK] = fn`` replaces the policy's clock (UNIX seconds), e.g. in tests
of the blocklist expiry or the midnight release of a frequency block."""


@dataclass(frozen=True)
class PolicySettings:
    """The effective rules for one account."""

    enabled: bool = True
    recipient_hourly_limit: int = 10         # FailedOperation.FrequencyLimit
    daily_limit: int = 300_000               # FailedOperation.ExceedSendLimit
    send_rate: float = 20.0                  # deliveries per second, paced by the queue
    max_backlog: int = 72_000                # queued recipients (1 h at 20/s); then RequestLimitExceeded
    max_recipients: int = 50                 # FailedOperation.TooManyRecipients
    max_subject_length: int = 998            # InvalidParameterValue.SubjectLengthError
    subject_warn_length: int = 78            # logged only (RFC 5322 §2.1.1 recommendation)
    pause_blocklist_share: float = 0.08      # FailedOperation.HighRejectionRate
    pause_min_volume: int = 300
    require_template: bool = False           # FailedOperation.WithOutPermission without a template


@dataclass(frozen=True)
class GlobalSettings:
    timezone: str = "UTC"                    # day boundaries: daily counters, frequency blocks
    blocklist_ttl: float = 14 * 86400.0
    template_dir: str | None = None


ACCOUNT_KEYS = tuple(f.name for f in fields(PolicySettings))
GLOBAL_KEYS = tuple(f.name for f in fields(GlobalSettings))


def _int(value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"must be an integer >= {minimum}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _share(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError("must be a fraction between 0 and 1, e.g. 0.08 for 8 %")
    return float(value)


def _rate(value: object) -> float:
    rate = parse_rate(value)
    if rate <= 0:
        raise ValueError("must be more than 0")
    return rate


_PARSERS: dict[str, Callable[[object], Any]] = {
    "enabled": _bool, "require_template": _bool,
    "recipient_hourly_limit": lambda v: _int(v, 1), "daily_limit": lambda v: _int(v, 1),
    "send_rate": _rate, "max_backlog": lambda v: _int(v, 1), "max_recipients": lambda v: _int(v, 1),
    "max_subject_length": lambda v: _int(v, 1), "subject_warn_length": lambda v: _int(v, 1),
    "pause_blocklist_share": _share, "pause_min_volume": lambda v: _int(v, 1),
}


def _timezone(value: object) -> str:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as \"Asia/Shanghai\")") from None
    return str(value)


def _ttl(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be more than 0")
    return seconds


def _template_dir(value: object) -> str:
    if not isinstance(value, str) or not Path(value).is_dir():
        raise ValueError(f"{value!r} is not a directory")
    return value


_GLOBAL_PARSERS: dict[str, Callable[[object], Any]] = {
    "timezone": _timezone, "blocklist_ttl": _ttl, "template_dir": _template_dir,
}


def _apply(base: PolicySettings, table: Mapping[str, Any], where: str, errors: list[str]) -> PolicySettings:
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key in GLOBAL_KEYS and where.startswith("plugins."):
            continue
        parser = _PARSERS.get(key)
        if parser is None:
            errors.append(f"{where}.{key}: unknown key")
            continue
        try:
            changes[key] = parser(value)
        except ValueError as exc:
            errors.append(f"{where}.{key}: {exc}")
    return replace(base, **changes)


def global_settings(config: "Config", errors: list[str] | None = None) -> GlobalSettings:
    table = config.plugin_config(PLUGIN)
    changes: dict[str, Any] = {}
    for key, parser in _GLOBAL_PARSERS.items():
        if key in table:
            try:
                changes[key] = parser(table[key])
            except ValueError as exc:
                if errors is not None:
                    errors.append(f"plugins.{PLUGIN}.{key}: {exc}")
    return replace(GlobalSettings(), **changes)


def validate(config: "Config") -> list[str]:
    """One-line errors for ``[plugins.ses_policy]`` and every ``[accounts.NAME.ses_policy]``."""
    errors: list[str] = []
    global_settings(config, errors)
    base = _apply(PolicySettings(), config.plugin_config(PLUGIN), f"plugins.{PLUGIN}", errors)
    for name, account in config.accounts.items():
        table = account.settings.get(PLUGIN)
        if table is not None:
            _apply(base, table, f"accounts.{name}.{PLUGIN}", errors)
    return [f"{config.path}: {error}" for error in errors]


_CACHE: dict[int, tuple["Config", dict[str, PolicySettings | None]]] = {}


def for_account(config: "Config", account: str | None) -> PolicySettings | None:
    """The rules for ``account``, or None when the policy does not apply to it (no account:
    DSNs and unbound sessions; or ``enabled = false``).
    Cached per configuration object (a reload swaps the object)."""
    if account is None:
        return None
    cached = _CACHE.get(id(config))
    if cached is None or cached[0] is not config:
        _CACHE.clear()
        cached = (config, {})
        _CACHE[id(config)] = cached
    per_account = cached[1]
    if account not in per_account:
        per_account[account] = _resolve(config, account)
    return per_account[account]


def _resolve(config: "Config", account: str) -> PolicySettings | None:
    entry = config.accounts.get(account)
    table = entry.settings.get(PLUGIN) if entry is not None else None
    ignored: list[str] = []            # validate() reported them at start-up
    settings = _apply(PolicySettings(), config.plugin_config(PLUGIN), f"plugins.{PLUGIN}", ignored)
    if table is not None:
        settings = _apply(settings, table, f"accounts.{account}.{PLUGIN}", ignored)
    return settings if settings.enabled else None


# -- the clock and the day --------------------------------------------------------------------


def clock_of(stash: Any) -> Clock:
    return stash.get(CLOCK, time.time) if stash is not None else time.time


def day_of(timestamp: float, timezone: str) -> str:
    """``YYYY-MM-DD`` of ``timestamp`` in ``timezone``: the key of a day's counters."""
    return datetime.fromtimestamp(timestamp, ZoneInfo(timezone)).strftime("%Y-%m-%d")


def next_midnight(timestamp: float, timezone: str) -> float:
    """00:00 of the day after ``timestamp`` in ``timezone`` (DST-safe: built from the date)."""
    zone = ZoneInfo(timezone)
    tomorrow = datetime.fromtimestamp(timestamp, zone).date() + timedelta(days=1)
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone).timestamp()
