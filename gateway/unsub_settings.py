"""Settings of the unsubscribe plugin: ``[plugins.unsubscribe]`` and ``[accounts.NAME.unsubscribe]``.

The plugin is active when ``[plugins.unsubscribe] secret`` is set and ``[http]`` exists (the
links must point somewhere). Per-message choices (:class:`Policy`) have a gateway-wide
default in ``[plugins.unsubscribe]`` that an account's table overrides key by key.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

from gateway.config import secret_value
from gateway.session import StashKey
from gateway.units import parse_duration

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.server import Gateway

PLUGIN = "unsubscribe"
MODES = ("batch", "always", "never")
FOOTER_MODES = ("auto", "always", "never")
LANGUAGES = tuple(str(n) for n in range(1, 13))      # X-SES-Unsubscribe "1".."12" (ses-semantics.md §1.4)
POLICY_KEYS = ("headers", "footer", "open_tracking", "click_tracking", "language")
GLOBAL_KEYS = ("secret", "previous_secret", "token_ttl", "mailto") + POLICY_KEYS
DEFAULT_TTL = 60 * 86400


@dataclass(frozen=True)
class Policy:
    """What one account's mail gets."""

    headers: str = "batch"          # List-Unsubscribe(+Post): batch | always | never
    footer: str = "auto"            # visible link: auto (when X-SES-Unsubscribe is 1..12) | always | never
    open_tracking: str = "batch"    # pixel in HTML parts: batch | always | never
    click_tracking: str = "batch"   # link rewriting in HTML parts: batch | always | never
    language: str = "2"             # page/footer language when the message names none


@dataclass(frozen=True)
class Settings:
    secrets: tuple[bytes, ...]      # current first, then the previous one
    token_ttl: float
    mailto: bool
    public_url: str
    hostname: str
    default: Policy
    accounts: Mapping[str, Policy]

    def policy(self, account: str | None) -> Policy:
        return self.accounts.get(account or "", self.default)


def resolve_secret(value: Any, env: Mapping[str, str] | None = None) -> str:
    """A token secret in the core's secret shapes, at least 16 characters long."""
    secret = secret_value(value, env).value
    if len(secret) < 16:
        raise ValueError("must be at least 16 characters (use a random string)")
    return secret


def _policy(table: Mapping[str, Any], base: Policy, where: str, errors: list[str]) -> Policy:
    changes: dict[str, str] = {}
    for key in ("headers", "open_tracking", "click_tracking"):
        if key in table:
            if table[key] not in MODES:
                errors.append(f"{where}.{key}: must be one of {', '.join(MODES)}; got {table[key]!r}")
            else:
                changes[key] = table[key]
    if "footer" in table:
        if table["footer"] not in FOOTER_MODES:
            errors.append(f"{where}.footer: must be one of {', '.join(FOOTER_MODES)}; got {table['footer']!r}")
        else:
            changes["footer"] = table["footer"]
    if "language" in table:
        if str(table["language"]) not in LANGUAGES:
            errors.append(f'{where}.language: must be an X-SES-Unsubscribe code "1".."12"; got {table["language"]!r}')
        else:
            changes["language"] = str(table["language"])
    return replace(base, **changes)


def load(config: "Config", errors: list[str] | None = None) -> Settings | None:
    """Settings for ``config``, or ``None`` when the plugin is inactive. Problems are appended
    to ``errors`` as one-line messages (``gateway_validate_config``)."""
    errors = [] if errors is None else errors
    table = config.plugin_config(PLUGIN)
    where = f"{config.path}: plugins.{PLUGIN}"
    for key in table:
        if key not in GLOBAL_KEYS:
            errors.append(f"{where}.{key}: unknown key")
    default = _policy(table, Policy(), where, errors)
    accounts: dict[str, Policy] = {}
    for account in config.accounts.values():
        sub = account.settings.get(PLUGIN)
        if sub is None:
            continue
        at = f"{config.path}: accounts.{account.name}.{PLUGIN}"
        for key in sub:
            if key not in POLICY_KEYS:
                errors.append(f"{at}.{key}: unknown key")
        accounts[account.name] = _policy(sub, default, at, errors)
    ttl = float(DEFAULT_TTL)
    if "token_ttl" in table:
        try:
            ttl = parse_duration(table["token_ttl"])
        except ValueError as exc:
            errors.append(f"{where}.token_ttl: {exc}")
        if ttl < 86400 * 2:
            # Gmail and Yahoo expect unsubscribes honoured for at least 48 hours after sending.
            errors.append(f"{where}.token_ttl: must be at least 2d")
    mailto = table.get("mailto", True)
    if not isinstance(mailto, bool):
        errors.append(f"{where}.mailto: expected true or false")
    if "secret" not in table:
        if "previous_secret" in table:
            errors.append(f"{where}.previous_secret: needs secret")
        return None
    secrets: list[bytes] = []
    for key in ("secret", "previous_secret"):
        if key in table:
            try:
                secrets.append(resolve_secret(table[key]).encode("utf-8"))
            except ValueError as exc:
                errors.append(f"{where}.{key}: {exc}")
    if config.http is None:
        errors.append(f"{where}: needs an [http] listener with public_url for the unsubscribe and tracking links")
    if errors or config.http is None:
        return None
    return Settings(tuple(secrets), ttl, bool(mailto), config.http.public_url, config.hostname.lower(), default, accounts)



_CACHE: "StashKey[tuple[Any, Settings | None]]" = StashKey()


def current(gateway: "Gateway") -> Settings | None:
    """The settings for ``gateway.config`` (recomputed after a reload swapped the config)."""
    cached = gateway.stash[_CACHE] if _CACHE in gateway.stash else None
    if cached is None or cached[0] is not gateway.config:
        cached = (gateway.config, load(gateway.config))
        gateway.stash[_CACHE] = cached
    return cached[1]
