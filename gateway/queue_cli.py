"""``ses-gateway queue``: mailq / postqueue / postsuper / qshape for the running daemon.

Every sub-command is one admin API call (:mod:`gateway.queue_api`) to the daemon named by
the configuration file: ``[http] address`` and ``admin_token``. The daemon's scheduler owns
the queue, so nothing here races a delivery. ``--url`` and ``--token`` (or
``SES_GATEWAY_ADMIN_TOKEN``) override the file.

Exit status: 0 done, 1 not found / refused, 69 (EX_UNAVAILABLE) daemon unreachable,
78 (EX_CONFIG) configuration problem.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from gateway.config import ConfigError, load

EX_UNAVAILABLE = 69


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def register(subparsers: Any) -> None:
    queue = subparsers.add_parser("queue", help="inspect and manage the delivery queue of the running gateway")
    queue.add_argument("-c", "--config", default="/etc/ses-gateway/gateway.toml", help="configuration file")
    queue.add_argument("--url", help="admin API base URL (default: from [http] address)")
    queue.add_argument("--token", help="admin token (default: [http] admin_token or $SES_GATEWAY_ADMIN_TOKEN)")
    queue.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = queue.add_subparsers(dest="queue_command", required=True)
    lst = sub.add_parser("list", help="list queued messages (mailq)")
    lst.add_argument("--domain")
    lst.add_argument("--account")
    lst.add_argument("--deferred", action="store_true", help="only messages with a recipient waiting for a retry")
    lst.add_argument("--held", action="store_true", help="only messages on hold")
    lst.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="envelope, per-recipient state, last error, next attempt")
    show.add_argument("id")
    show.set_defaults(func=cmd_show)
    retry = sub.add_parser("retry", help="attempt now (postqueue -i / -f / -s)")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?")
    target.add_argument("--all", action="store_true")
    target.add_argument("--domain")
    retry.set_defaults(func=cmd_retry)
    for name, text in (("hold", "hold a message: no attempts until released (postsuper -h)"),
                       ("release", "release a held message and attempt it now (postsuper -H)")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("id")
        cmd.set_defaults(func=cmd_hold, action=name)
    delete = sub.add_parser("delete", help="delete a message; a dropped event per recipient (postsuper -d)")
    delete.add_argument("id")
    delete.add_argument("--reason", default="deleted by the administrator")
    delete.set_defaults(func=cmd_delete)
    summary = sub.add_parser("summary", help="recipients by destination domain and age (qshape)")
    summary.set_defaults(func=cmd_summary)


# -- transport ----------------------------------------------------------------------------------
def _endpoint(args: argparse.Namespace) -> tuple[str, str | None]:
    url, token = args.url, args.token or os.environ.get("SES_GATEWAY_ADMIN_TOKEN")
    if url is None or token is None:
        config = load(args.config)
        if config.http is None:
            raise ConfigError(f"{args.config}: no [http] section: the queue tools use the admin API")
        if url is None:
            host = config.http.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
            url = f"http://[{host}]:{config.http.port}" if ":" in host else f"http://{host}:{config.http.port}"
        if token is None and config.http.admin_token is not None:
            token = config.http.admin_token.value
    if not token:
        raise ConfigError(f"{args.config}: [http] admin_token is not set: the queue tools need it")
    return url.rstrip("/"), token


def call(args: argparse.Namespace, method: str, path: str, query: dict[str, str] | None = None) -> Any:
    base, token = _endpoint(args)
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        finally:
            exc.close()
        raise ApiError(exc.code, f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(0, f"cannot reach the gateway at {base}: {reason}") from None


_run = call


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ApiError as exc:
            print(f"ses-gateway queue: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE if exc.status == 0 else 1

    return run


def _quoted(message_id: str) -> str:
    return urllib.parse.quote(message_id, safe="")


# -- commands ---------------------------------------------------------------------------------------
@_guarded
def cmd_list(args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("domain", args.domain), ("account", args.account)) if v}
    if args.deferred:
        query["deferred"] = "1"
    if args.held:
        query["held"] = "1"
    result = _run(args, "GET", "/v1/queue", query)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not result["messages"]:
        print("Mail queue is empty")
        return 0
    # mailq's shape: id (! when held), size, arrival, sender; then one line per pending recipient.
    print(f"{'-Queue ID-':<56} {'--Size--':>8} {'----Arrival Time----':<20} -Sender/Recipient-")
    for m in result["messages"]:
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(m["received"]))
        print(f"{m['id'] + ('!' if m['held'] else ''):<56} {m['size']:>8} {arrival:<20} {m['sender'] or '<>'}")
        for r in m["recipients"]:
            if r["status"] in ("delivered", "bounced"):
                continue
            if r["last_error"]:
                print(f"{'':8}({r['last_error'][:100]})")
            print(f"{'':48}{r['recipient']}")
    print(f"-- {result['total']} message(s)")
    return 0


@_guarded
def cmd_show(args: argparse.Namespace) -> int:
    m = _run(args, "GET", f"/v1/queue/{_quoted(args.id)}")
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"id:        {m['id']}{'  (HELD)' if m['held'] else ''}")
    print(f"account:   {m['account']}")
    print(f"sender:    {m['sender'] or '<>'}")
    print(f"received:  {_when(m['received'])} ({_age(m['age'])} ago)")
    print(f"size:      {m['size']}")
    for key, value in m.get("meta", {}).items():
        print(f"{key + ':':<11}{value}")
    print("recipients:")
    for r in m["recipients"]:
        line = f"  {r['recipient']}: {r['status']}, {r['attempts']} attempt(s)"
        if r["next_attempt"] and r["status"] not in ("delivered", "bounced"):
            line += f", next attempt {_when(r['next_attempt'])}"
        print(line)
        if r["last_error"]:
            print(f"    last error: {r['last_error']}")
    return 0


@_guarded
def cmd_retry(args: argparse.Namespace) -> int:
    if args.id:
        _run(args, "POST", f"/v1/queue/{_quoted(args.id)}/retry")
        print(f"{args.id}: queued for immediate delivery")
        return 0
    result = _run(args, "POST", "/v1/queue/retry", {"all": "1"} if args.all else {"domain": args.domain})
    print(f"{result['retried']} message(s) queued for immediate delivery")
    return 0


@_guarded
def cmd_hold(args: argparse.Namespace) -> int:
    _run(args, "POST", f"/v1/queue/{_quoted(args.id)}/{args.action}")
    print(f"{args.id}: {'held' if args.action == 'hold' else 'released'}")
    return 0


@_guarded
def cmd_delete(args: argparse.Namespace) -> int:
    result = _run(args, "DELETE", f"/v1/queue/{_quoted(args.id)}", {"reason": args.reason})
    print(f"{args.id}: deleted ({len(result['dropped'])} recipient(s) dropped)")
    return 0


@_guarded
def cmd_summary(args: argparse.Namespace) -> int:
    result = _run(args, "GET", "/v1/queue/summary")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    buckets = result["buckets"]
    width = max([len("TOTAL"), *(len(d["domain"]) for d in result["domains"])]) + 1
    print(f"{'':{width}} {'T':>6} " + " ".join(f"{b:>8}" for b in buckets))
    totals = [sum(d["by_age"][i] for d in result["domains"]) for i in range(len(buckets))]
    print(f"{'TOTAL':>{width}} {result['recipients']:>6} " + " ".join(f"{n:>8}" for n in totals))
    for d in result["domains"]:
        print(f"{d['domain']:>{width}} {d['total']:>6} " + " ".join(f"{n:>8}" for n in d["by_age"]))
    print(f"-- {result['messages']} message(s), {result['held_messages']} held")
    return 0


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(stamp))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}m"
    return f"{seconds / 3600:.1f}h"
