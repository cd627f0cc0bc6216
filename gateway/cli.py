"""The ``ses-gateway`` command: run, check-config, plugins, passwd, and the admin tools.

Configuration and start-up errors print one line to stderr and exit 78 (EX_CONFIG).
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any, Callable

from gateway import __version__
from gateway import plugins as plugin_registry
from gateway.config import EX_CONFIG, ConfigError, load
from gateway.plugins import StartupError

DEFAULT_CONFIG = "/etc/ses-gateway/gateway.toml"


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")


def cmd_run(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.server import serve

    config = load(args.config)
    logs.configure(config.log_level, config.log_format)
    if config.workers > 1:
        from gateway import workers

        return workers.run(config)
    try:
        import uvloop  # optional: a faster event loop when installed
        return int(uvloop.run(serve(config)))
    except ImportError:
        return asyncio.run(serve(config))


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.server import Gateway

    config = load(args.config)

    async def check() -> None:
        gateway = Gateway(config)
        await gateway.validate()

    asyncio.run(check())
    print(f"{args.config}: OK ({len(config.listeners)} listener(s), {len(config.accounts)} account(s), "
          f"transport {config.delivery.transport})")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    disabled: tuple[str, ...] = ()
    if args.config:
        disabled = load(args.config).plugins_disabled
    pm = plugin_registry.create(disabled)
    for name, version, hooks in plugin_registry.describe(pm):
        print(f"{name} ({version})")
        for hook in hooks:
            order = plugin_registry.call_order(pm, hook)
            print(f"    {hook}  [call order: {', '.join(order)}]")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from gateway.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            print("ses-gateway: passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("ses-gateway: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ses-gateway", description="SMTP gateway with cloud-SES semantics")
    parser.add_argument("--version", action="version", version=f"ses-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway")
    _config_arg(run)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a configuration file (exit 78 on error)")
    _config_arg(check)
    check.set_defaults(func=cmd_check_config)
    plugins = sub.add_parser("plugins", help="list plugins and the hooks each implements, in call order")
    plugins.add_argument("-c", "--config", default=None)
    plugins.set_defaults(func=cmd_plugins)
    passwd = sub.add_parser("passwd", help="print a password hash for [accounts.NAME] password_hash")
    passwd.set_defaults(func=cmd_passwd)
    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    """Sub-command groups that live in their own modules (dkim, domain, …)."""
    import importlib
    import importlib.util

    found = []
    for module_name in EXTENSIONS:
        if importlib.util.find_spec(module_name) is None:
            continue
        found.append(importlib.import_module(module_name).register)
    return found


# Modules that add sub-command groups with `register(subparsers)`.
EXTENSIONS = ("gateway.dkimtool", "gateway.policy_cli", "gateway.events_cli", "gateway.warmup_cli", "gateway.queue_cli")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, StartupError) as exc:
        print(f"ses-gateway: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
