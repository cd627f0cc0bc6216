"""``ses-gateway events``: the callback outbox for operators.

    ses-gateway events list [--failed | --state STATE] [--limit N] [--json] -c FILE
    ses-gateway events replay ID|SEQ -c FILE       # post one event again
    ses-gateway events replay --failed -c FILE     # post every failed event again
    ses-gateway events enable-url URL|ACCOUNT -c FILE   # after 410 Gone

The commands open the state store directly (SQLite is safe next to a running gateway); the
gateway's sender sees requeued events at its next poll.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Awaitable, Callable

from gateway.config import load
from gateway.store.base import Store, open_store
from gateway.webhooks_ops import STATES, describe, disabled_urls, enable_url, replay, scan
from gateway.webhooks_settings import load as load_settings


def register(subparsers: Any) -> None:
    from gateway.cli import DEFAULT_CONFIG

    events = subparsers.add_parser("events", help="callback events: list, replay, re-enable URLs")
    sub = events.add_subparsers(dest="events_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")

    listing = sub.add_parser("list", help="events in the outbox, oldest first")
    common(listing)
    listing.add_argument("--failed", action="store_true", help="only events given up after the retry schedule")
    listing.add_argument("--state", choices=STATES, help="only events in this state")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_list)

    again = sub.add_parser("replay", help="post an event again (by id or seq), or every failed one")
    common(again)
    again.add_argument("id", nargs="?", help="event id (evt_…) or outbox sequence number")
    again.add_argument("--failed", action="store_true", help="every failed event")
    again.set_defaults(func=cmd_replay)

    enable = sub.add_parser("enable-url", help="re-enable a URL disabled after 410 Gone and requeue its events")
    common(enable)
    enable.add_argument("target", help="the callback URL, or an account name (all its URLs)")
    enable.set_defaults(func=cmd_enable_url)


def _with_store(args: argparse.Namespace, action: Callable[[Store, Any], Awaitable[int]]) -> int:
    config = load(args.config)

    async def run() -> int:
        store = open_store(config.state)
        await store.open()
        try:
            return await action(store, config)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_list(args: argparse.Namespace) -> int:
    state = "failed" if args.failed else args.state

    async def action(store: Store, config: Any) -> int:
        settings = load_settings(config)[0]
        rows = [describe(item, settings) for item in await scan(store, state=state, limit=args.limit)]
        if args.json:
            for row in rows:
                print(json.dumps(row))
            return 0
        print(f"{'SEQ':>6}  {'STATE':<9} {'EVENT':<11} {'TRIES':>5}  {'NEXT':<19} {'ID':<28} EMAIL / LAST ERROR")
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["NextAttempt"])) if row["NextAttempt"] else "-"
            print(f"{row['Seq']:>6}  {row['State']:<9} {row['Event']:<11} {row['Attempts']:>5}  {when:<19} "
                  f"{row['Id']:<28} {row['Email']}" + (f"  ({row['LastError']})" if row["LastError"] else ""))
        for url, data in await disabled_urls(store):
            print(f"disabled URL: {url} (account {data.get('account')}, {data.get('reason', '')})")
        return 0

    return _with_store(args, action)


def cmd_replay(args: argparse.Namespace) -> int:
    if bool(args.id) == bool(args.failed):
        print("ses-gateway: events replay: give an event id or --failed", file=sys.stderr)
        return 2

    async def action(store: Store, config: Any) -> int:
        count = await replay(store, failed=True) if args.failed else await replay(store, args.id)
        if count == 0 and not args.failed:
            print(f"ses-gateway: no event {args.id}", file=sys.stderr)
            return 1
        print(f"{count} event(s) queued for delivery")
        return 0

    return _with_store(args, action)


def cmd_enable_url(args: argparse.Namespace) -> int:
    async def action(store: Store, config: Any) -> int:
        urls, count = await enable_url(store, load_settings(config)[0], args.target)
        print(f"enabled {', '.join(urls) if urls else 'nothing (not disabled)'}; {count} event(s) queued again")
        return 0

    return _with_store(args, action)
