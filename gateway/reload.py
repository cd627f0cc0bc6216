"""Configuration reload (SIGHUP): validate completely, then swap atomically, or keep running.

The new file goes through everything a start-up does short of binding sockets: TOML and
core validation (:func:`gateway.config.load`), unknown per-account plugin tables, every
plugin's ``gateway_validate_config``, every DKIM key (a new signer is built), and every
listener certificate (loaded into a fresh TLS context). Only when all of that passes is
``gateway.config`` replaced, in one assignment, between two event-loop steps:

- new SMTP sessions get the new listener settings and limits; a running session keeps the
  configuration it started with (the intake snapshots it at connect);
- the new DKIM signer signs every delivery attempt from now on;
- certificates are loaded into the live TLS contexts (new handshakes use them);
- ``[delivery]`` changes get a new SMTP transport (deliveries in flight finish on the old
  one, which is closed at shutdown);
- plugins refresh cached settings in ``gateway_reload(gateway, old_config)``.

A failure changes nothing: the error is logged and reported in systemd's ``STATUS=``.
Settings bound to open sockets or files (listener addresses, the HTTP address, the spool,
the state store, disabled plugins, worker count) need a restart; a reload that changes
them says so in the log and keeps the running values for those.
"""
from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from gateway.config import Config, ConfigError, load
from gateway.plugins import StartupError

if TYPE_CHECKING:
    from gateway.server import Gateway

log = structlog.get_logger("gateway.reload")


@dataclass
class Prepared:
    config: Config
    signer: Any
    tls: dict[int, ssl.SSLContext]        # listener index -> freshly loaded context (validation)


@dataclass
class Outcome:
    ok: bool
    error: str = ""
    restart_needed: tuple[str, ...] = ()
    seconds: float = 0.0


def restart_needed(old: Config, new: Config) -> list[str]:
    """Settings the running process cannot change in place."""
    keys = []
    if [listener.address for listener in old.listeners] != [listener.address for listener in new.listeners]:
        keys.append("listener.address")
    for old_l, new_l in zip(old.listeners, new.listeners):
        if (old_l.mode == "smtps") != (new_l.mode == "smtps") or (old_l.mode == "smtps" and not new_l.tls_cert):
            keys.append("listener.mode")
            break
    if (old.http.address if old.http else None) != (new.http.address if new.http else None):
        keys.append("http.address")
    for name in ("spool_dir", "state"):
        if getattr(old, name) != getattr(new, name):
            keys.append(f"server.{name}")
    if old.plugins_disabled != new.plugins_disabled:
        keys.append("plugins.disabled")
    if old.delivery.max_connections != new.delivery.max_connections:
        keys.append("delivery.max_connections")
    return keys


async def prepare(gateway: "Gateway", path: str) -> Prepared:
    """Read and validate ``path`` like a start-up would; raises ConfigError/StartupError."""
    from gateway.server import tls_context

    config = await asyncio.to_thread(load, path)
    signer = await gateway.check(config)
    contexts = {}
    for index, listener in enumerate(config.listeners):
        if listener.tls_cert:
            contexts[index] = await asyncio.to_thread(tls_context, listener.tls_cert, listener.tls_key)
    return Prepared(config, signer, contexts)


async def reload(gateway: "Gateway") -> Outcome:
    started = time.monotonic()
    old = gateway.config
    try:
        prepared = await prepare(gateway, old.path)
    except (ConfigError, StartupError) as exc:
        log.error("reload failed, keeping the running configuration", error=str(exc))
        return Outcome(False, str(exc), seconds=time.monotonic() - started)
    except Exception as exc:   # a plugin's validator crashed: still never half-apply
        log.error("reload failed, keeping the running configuration", error=repr(exc), exc_info=True)
        return Outcome(False, f"internal error: {exc!r}", seconds=time.monotonic() - started)
    new = prepared.config
    fixed = restart_needed(old, new)
    if fixed:
        log.warning("reload: these settings need a restart to take effect", keys=fixed)
    # -- the swap: no await between these lines, so no session sees half of it --------------
    gateway.config = new
    gateway.signer = prepared.signer
    gateway.apply_listeners(prepared.tls)
    if new.delivery != old.delivery:
        gateway.replace_transport()
    if (new.log_level, new.log_format) != (old.log_level, old.log_format):
        from gateway import logs

        logs.configure(new.log_level, new.log_format)
    # ------------------------------------------------------------------------------------------
    await gateway.dispatch.notify("gateway_reload", gateway=gateway, old_config=old)
    seconds = time.monotonic() - started
    log.info("configuration reloaded", path=new.path, accounts=len(new.accounts), seconds=round(seconds, 3))
    return Outcome(True, restart_needed=tuple(fixed), seconds=seconds)
