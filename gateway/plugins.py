"""The plugin manager: built-ins and third-party entry points, registered the same way.

Built-ins are ordinary plugins in ``plugins/`` (installed as ``gateway_plugins``); their
defaults are ``trylast`` impls, so overriding one means implementing the hook. Any plugin
can be disabled by name with ``[plugins] disabled = ["name"]``. Third-party plugins
register under the entry-point group ``ses_gateway``. ``GATEWAY_LOAD_PLUGINS=a,b`` limits
which entry points load; ``GATEWAY_TRACE_PLUGINS=1`` logs every impl call.
"""
from __future__ import annotations

import importlib
import inspect
import os
from importlib.metadata import entry_points
from typing import Any, Iterable

import pluggy

from gateway import hookspecs

PROJECT = "ses_gateway"
ENTRY_POINT_GROUP = "ses_gateway"

# (name, module): names are what `[plugins] disabled` and `ses-gateway plugins` use.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("accounts", "gateway_plugins.accounts"),
    ("routing", "gateway_plugins.routing"),
    ("ses_policy", "gateway_plugins.ses_policy"),
    ("admin_api", "gateway_plugins.admin_api"),
    ("callbacks", "gateway_plugins.callbacks"),
    ("unsubscribe", "gateway_plugins.unsubscribe"),
    ("warmup", "gateway_plugins.warmup"),
    ("metrics", "gateway_plugins.metrics"),
)

# Hooks whose results decide something: an impl of these must not be a wrapper.
FIRST_RESULT_HOOKS = {"gateway_auth", "gateway_route", "gateway_source_address", "gateway_delivery_gate"}


class StartupError(Exception):
    """The gateway cannot start (one line, exit 78)."""


class PluginManager(pluggy.PluginManager):
    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        # Only gateway_* attributes are hook impls, so plugin classes can keep helpers (pytest #1073).
        if not name.startswith("gateway_"):
            return None
        opts: Any = super().parse_hookimpl_opts(plugin, name)
        if opts is None:
            method = getattr(plugin, name, None)
            # An unmarked gateway_* function is an impl (as pytest does with pytest_*), but
            # only where it is defined: a module that imports a helper such as
            # gateway.http.gateway_of must not turn it into a hook impl.
            defined_here = getattr(method, "__module__", None) == getattr(plugin, "__name__", None) \
                or not inspect.ismodule(plugin)
            if inspect.isroutine(method) and defined_here:
                opts = {}
        if opts is not None and (opts.get("wrapper") or opts.get("hookwrapper")):
            raise StartupError(f"{name} in {getattr(plugin, '__name__', plugin)!r}: wrapper impls are not supported")
        return opts


def create(disabled: Iterable[str] = (), *, load_entry_points: bool = True, extra: Iterable[tuple[str, Any]] = ()) -> PluginManager:
    """Register built-ins, entry points and ``extra`` plugins, then check them."""
    pm = PluginManager()
    disabled = set(disabled)
    for name, module_name in BUILTIN_PLUGINS:
        if name in disabled:
            pm.set_blocked(name)
            continue
        pm.register(importlib.import_module(module_name), name)
    if load_entry_points:
        wanted = os.environ.get("GATEWAY_LOAD_PLUGINS")
        only = {x.strip() for x in wanted.split(",")} if wanted else None
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in disabled or (only is not None and ep.name not in only):
                continue
            if pm.get_plugin(ep.name) is not None:
                raise StartupError(f"plugin {ep.name!r} from {ep.value} clashes with a plugin of the same name")
            try:
                plugin = ep.load()
            except Exception as exc:  # an import error in a third-party plugin stops start-up
                raise StartupError(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from None
            pm.register(plugin, ep.name)
    for name, plugin in extra:
        if name not in disabled:
            pm.register(plugin, name)
    unknown = disabled - {n for n, _ in BUILTIN_PLUGINS} - {n for n, _ in pm.list_name_plugin()}
    if unknown and load_entry_points:
        raise StartupError(f"plugins.disabled: unknown plugin {sorted(unknown)[0]!r}")
    try:
        # A misspelled hookimpl (gateway_rcp) stops start-up instead of silently never running.
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise StartupError(str(exc).splitlines()[0]) from None
    return pm


def describe(pm: PluginManager) -> list[tuple[str, str, list[str]]]:
    """(name, version, hooks it implements) per plugin, for ``ses-gateway plugins``."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        module = inspect.getmodule(plugin)
        version = getattr(module, "__version__", None) or getattr(plugin, "__version__", None) or "builtin"
        rows.append((name, str(version), hooks))
    return rows


def call_order(pm: PluginManager, hook: str) -> list[str]:
    """Plugin names in the order the dispatcher calls ``hook``."""
    caller = getattr(pm.hook, hook)
    return [impl.plugin_name for impl in reversed(caller.get_hookimpls())]
