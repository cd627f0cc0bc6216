"""The only caller of hooks.

pluggy is synchronous; an ``async def`` impl returns a coroutine. The dispatcher walks the
impls in pluggy's call order, passes each only the arguments it names, awaits what is
awaitable under a per-impl timeout, stops where the hook's rule says, and logs with the
plugin's name. Failure policy (DESIGN §3): a policy hook that raises or times out yields
``DENYSOFT 451 4.3.0`` (fail temporarily, never open, never leak the exception text); a
notification hook that raises is logged and skipped.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import time
from typing import Any

import structlog

from gateway.plugins import PluginManager
from gateway.results import Reply, Verdict, as_reply

log = structlog.get_logger("gateway.dispatch")

POLICY_FAILURE = Reply(Verdict.DENYSOFT, 451, "4.3.0", "Internal error, try again later")


class HookFailed(Exception):
    """A hook impl raised or timed out where the caller needs a result (routing, gates)."""

    def __init__(self, hook: str, plugin: str) -> None:
        super().__init__(f"{hook} failed in plugin {plugin}")
        self.hook = hook
        self.plugin = plugin


class Dispatcher:
    def __init__(self, pm: PluginManager, *, timeout: float = 30.0, gateway: Any = None) -> None:
        self.pm = pm
        self.gateway = gateway
        self.timeout = timeout
        self.trace = os.environ.get("GATEWAY_TRACE_PLUGINS") == "1"
        self._impls: dict[str, list[Any]] = {}

    def impls(self, hook: str) -> list[Any]:
        # Cached: the plugin set only changes at start-up and on reload (new Dispatcher).
        impls = self._impls.get(hook)
        if impls is None:
            impls = list(reversed(getattr(self.pm.hook, hook).get_hookimpls()))
            self._impls[hook] = impls
        return impls

    async def _call(self, hook: str, impl: Any, kwargs: dict[str, Any]) -> Any:
        # Every hook may take `gateway`; callers need not pass it.
        args = [self.gateway if name == "gateway" else kwargs[name] for name in impl.argnames]
        started = time.perf_counter() if self.trace else 0.0
        result = impl.function(*args)
        if inspect.isawaitable(result):
            async with asyncio.timeout(self.timeout):
                result = await result
        if self.trace:
            log.debug("hook call", hook=hook, plugin=impl.plugin_name, result=repr(result),
                      ms=round((time.perf_counter() - started) * 1000, 3))
        return result

    async def verdict(self, hook: str, **kwargs: Any) -> Reply:
        """Policy hooks: the first decisive verdict, or CONT."""
        for impl in self.impls(hook):
            try:
                reply = as_reply(await self._call(hook, impl, kwargs))
            except Exception:
                log.critical("policy hook failed", hook=hook, plugin=impl.plugin_name, exc_info=True)
                return POLICY_FAILURE
            if reply.verdict.decisive:
                return reply
        return Reply(Verdict.CONT)

    async def first(self, hook: str, **kwargs: Any) -> Any:
        """The first result that is not None; raises :class:`HookFailed` when an impl fails."""
        for impl in self.impls(hook):
            try:
                result = await self._call(hook, impl, kwargs)
            except Exception:
                log.critical("hook failed", hook=hook, plugin=impl.plugin_name, exc_info=True)
                raise HookFailed(hook, impl.plugin_name) from None
            if result is not None:
                return result
        return None

    async def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """Every impl's result that is not None, in call order; failures are logged and skipped."""
        results = []
        for impl in self.impls(hook):
            try:
                result = await self._call(hook, impl, kwargs)
            except Exception:
                log.error("hook failed", hook=hook, plugin=impl.plugin_name, exc_info=True)
                continue
            if result is not None:
                results.append(result)
        return results

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Notification hooks: call every impl, log and skip failures."""
        for impl in self.impls(hook):
            try:
                await self._call(hook, impl, kwargs)
            except Exception:
                log.error("notification hook failed", hook=hook, plugin=impl.plugin_name, exc_info=True)

    def has_impls(self, hook: str) -> bool:
        return bool(self.impls(hook))
