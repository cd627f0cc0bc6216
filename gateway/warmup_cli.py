"""``ses-gateway warmup status``: each egress IP's warm-up day, caps, use per provider, pauses.

Reads the state store directly (SQLite is safe across processes; a Redis store is shared
anyway), so it works beside a running gateway and shows what every node has spent.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from gateway.config import ConfigError, load
from gateway.store.base import open_store
from gateway.warmup_budget import Budgets
from gateway.warmup_config import parse


def register(subparsers: Any) -> None:
    warmup = subparsers.add_parser("warmup", help="per-IP warm-up: status of egress IPs")
    sub = warmup.add_subparsers(dest="warmup_command", required=True)
    status = sub.add_parser("status", help="day of warm-up, today's caps and use per provider, pauses, next level")
    status.add_argument("-c", "--config", default="/etc/ses-gateway/gateway.toml")
    status.add_argument("--json", action="store_true", help="print JSON (as GET /v1/warmup)")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args.config)
    settings, errors = parse(config)
    if errors:
        raise ConfigError(errors[0])
    if settings is None:
        print("warm-up is not configured (no [plugins.warmup] table)")
        return 0

    async def read() -> list[dict[str, Any]]:
        store = open_store(config.state)
        await store.open()
        try:
            return await Budgets(store, settings).status(time.time())
        finally:
            await store.close()

    rows = asyncio.run(read())
    if args.json:
        print(json.dumps({"ips": rows}, indent=2))
    else:
        print(render(rows))
    return 0


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def render(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        state = f"warming day {row['day']}" if row["state"] == "warming" else row["state"]
        lines.append(f"{row['ip']}  pool {row['pool']}  schedule {row['schedule']}  {state}  "
                     f"today {_n(row['sent_today'])}/{_n(row['daily_cap'])}  "
                     f"this hour {_n(row['sent_this_hour'])}/{_n(row['hourly_cap'])}")
        for name, usage in sorted(row["providers"].items()):
            extra = f"  paused until {usage['paused_until']}" if usage["paused_until"] else ""
            if usage["held_at_day"]:
                extra += f"  held at day {usage['held_at_day']}"
            lines.append(f"    {name:<10} {_n(usage['sent'])}/{_n(usage['cap'])}{extra}")
        level = row["next_level"]
        if level is not None:
            cap = "warm (no cap)" if level["daily_cap"] is None else f"{_n(level['daily_cap'])}/day" + (
                f" at {_n(level['hourly_cap'])}/h" if level["hourly_cap"] else "")
            lines.append(f"    next level: day {level['day']} from {level['starts']}: {cap}")
    return "\n".join(lines) if lines else "no egress IPs"
