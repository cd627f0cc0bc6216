"""Callback settings: ``[plugins.callbacks]`` and ``[accounts.NAME.callbacks]`` → typed objects.

Read from the configuration at use time (a SIGHUP may swap it); :func:`load` returns the
settings and the one-line errors ``gateway_validate_config`` reports. Where an event goes
(Tencent's two levels, ses-semantics.md §5.1): the sender address's URL when the account
lists one in ``sender_urls``, else the account's ``callback_url``, else nowhere (the event
is only recorded).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from gateway.config import Config, ConfigError, parse_secret
from gateway.events import Event
from gateway.units import parse_duration
from gateway.webhooks_signing import secret_key
from gateway.webhooks_ssrf import check_url

PLUGIN = "callbacks"


@dataclass(frozen=True)
class Options:
    """``[plugins.callbacks]``; defaults follow Standard Webhooks / Stripe practice."""

    allow_private_callbacks: bool = False
    retry_initial: float = 10.0          # first retry after this long, doubling each time
    retry_max: float = 6 * 3600.0        # longest wait between two attempts
    retry_jitter: float = 0.2            # ± share of each wait
    max_age: float = 72 * 3600.0         # then the event is marked failed
    retry_after_max: float = 24 * 3600.0  # cap on a receiver's Retry-After
    connect_timeout: float = 5.0
    timeout: float = 15.0
    batch_size: int = 1
    batch_wait: float = 0.0
    poll_interval: float = 1.0
    concurrency: int = 16                # URLs posted to at once

    def nominal_wait(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt, before jitter."""
        return float(min(self.retry_initial * 2 ** min(max(attempts - 1, 0), 60), self.retry_max))

    def backoff(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        return self.nominal_wait(attempts) * (1 + self.retry_jitter * (2 * rand() - 1))

    def exhausted(self, attempts: int) -> bool:
        """True when the nominal schedule after ``attempts`` failures passes ``max_age``."""
        return sum(self.nominal_wait(n) for n in range(1, attempts + 1)) > self.max_age


@dataclass(frozen=True)
class Target:
    """Where one event is posted and the keys that sign it."""

    url: str
    account: str
    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class AccountCallbacks:
    url: str | None
    sender_urls: Mapping[str, str] = field(default_factory=dict)
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Settings:
    options: Options
    accounts: Mapping[str, AccountCallbacks]

    def target(self, event: Event) -> Target | None:
        account = self.accounts.get(event.account or "")
        if account is None:
            return None
        url = account.sender_urls.get(event.sender.lower()) or account.url
        return Target(url, event.account or "", account.keys) if url else None

    def urls(self) -> set[str]:
        found: set[str] = set()
        for account in self.accounts.values():
            found.update(account.sender_urls.values())
            if account.url:
                found.add(account.url)
        return found


_DURATIONS = ("retry_initial", "retry_max", "max_age", "retry_after_max", "connect_timeout", "timeout",
              "batch_wait", "poll_interval")


def _options(table: Mapping[str, Any], where: str, errors: list[str]) -> Options:
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{where}: plugins.{PLUGIN}.{key}"
        try:
            if key in _DURATIONS:
                values[key] = parse_duration(value)
            elif key == "allow_private_callbacks":
                if not isinstance(value, bool):
                    raise ValueError("expected true or false")
                values[key] = value
            elif key in ("batch_size", "concurrency"):
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
                    raise ValueError("expected an integer from 1 to 1000")
                values[key] = value
            elif key == "retry_jitter":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                    raise ValueError("expected a number from 0 to below 1")
                values[key] = float(value)
            else:
                raise ValueError("unknown key")
        except ValueError as exc:
            errors.append(f"{name}: {exc}")
    options = Options(**values)
    for key in ("retry_initial", "timeout", "poll_interval", "connect_timeout"):
        if getattr(options, key) <= 0:
            errors.append(f"{where}: plugins.{PLUGIN}.{key}: must be more than 0")
    return options


def _keys(config: Config, table: Mapping[str, Any], dotted: str, errors: list[str]) -> tuple[bytes, ...]:
    keys = []
    for key in ("secret", "previous_secret"):
        if key not in table:
            continue
        try:
            keys.append(secret_key(parse_secret(config, f"{dotted}.{key}", table[key]).value))
        except ConfigError as exc:
            errors.append(str(exc))
        except ValueError as exc:
            errors.append(f"{config.path}: {dotted}.{key}: {exc}")
    return tuple(keys)


def load(config: Config) -> tuple[Settings, list[str]]:
    errors: list[str] = []
    options = _options(config.plugin_config(PLUGIN), config.path, errors)
    accounts: dict[str, AccountCallbacks] = {}
    for name, account in config.accounts.items():
        dotted = f"accounts.{name}.{PLUGIN}"
        table = account.settings.get(PLUGIN) or {}
        for key in table:
            if key not in ("secret", "previous_secret", "sender_urls"):
                errors.append(f"{config.path}: {dotted}.{key}: unknown key")
        if "previous_secret" in table and "secret" not in table:
            errors.append(f"{config.path}: {dotted}.previous_secret: set secret too (rotation signs with both)")
        raw_senders = table.get("sender_urls", {})
        senders: dict[str, str] = {}
        if not isinstance(raw_senders, Mapping):
            errors.append(f'{config.path}: {dotted}.sender_urls: expected a table {{ "from@domain" = "https://..." }}')
            raw_senders = {}
        for sender, url in raw_senders.items():
            if not isinstance(url, str) or "@" not in sender:
                errors.append(f"{config.path}: {dotted}.sender_urls: {sender!r} must map a sender address to a URL")
                continue
            senders[sender.lower()] = url
        for key, url in [("callback_url", account.callback_url), *((f"{PLUGIN}.sender_urls.{s}", u) for s, u in senders.items())]:
            problem = check_url(url, allow_private=options.allow_private_callbacks) if url else None
            if problem:
                errors.append(f"{config.path}: accounts.{name}.{key}: {problem}")
        accounts[name] = AccountCallbacks(account.callback_url, senders, _keys(config, table, dotted, errors))
    return Settings(options, accounts), errors
