"""``ses-gateway`` commands for the SES policy: status records, blocklist, unsubscribes,
accounts and templates. They open the state store named by ``[server] state`` directly
(SQLite is safe next to a running gateway: WAL, one writer at a time), so they work whether or
not the gateway runs.

    ses-gateway status --date 2026-11-26 [--message-id ID] [--to ADDR] [--offset N] [--limit N] [--json]
    ses-gateway blocklist list|add|remove ...
    ses-gateway unsubscribes list|add|remove ...
    ses-gateway account show|pause|resume NAME
    ses-gateway template check FILE|ID

Exit status: 0 done, 1 nothing found / template fails review, 2 bad parameter, 78 config error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, Awaitable, Callable

from gateway import ses_admin, ses_settings, ses_templates, suppression
from gateway.config import Config, load
from gateway.ses_admin import ParamError
from gateway.store.base import Store, open_store

DEFAULT_CONFIG = "/etc/ses-gateway/gateway.toml"


def _config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offset", type=int, default=None, help="skip this many (Offset)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many, <= 100 (Limit)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run(args: argparse.Namespace, work: Callable[[Config, Store], Awaitable[int]]) -> int:
    config = load(args.config)

    async def main() -> int:
        store = open_store(config.state)
        await store.open()
        try:
            return await work(config, store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except ParamError as exc:
        print(f"ses-gateway: {exc}", file=sys.stderr)
        return 2


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return ""
    return " ".join(str(value).split())[:80]


def _emit(args: argparse.Namespace, data: dict[str, Any], key: str, columns: list[str]) -> int:
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _table(data[key], columns)
        if "TotalCount" in data:
            print(f"({len(data[key])} of {data['TotalCount']})")
    return 0 if data[key] else 1


def _page(args: argparse.Namespace) -> dict[str, Any]:
    return {"Offset": args.offset, "Limit": args.limit}


# -- status --------------------------------------------------------------------------------------------


STATUS_COLUMNS = ["MessageId", "ToEmailAddress", "SendStatus", "DeliverStatus", "DeliverMessage", "RequestTime",
                  "DeliverTime", "UserOpened", "UserClicked", "UserUnsubscribed"]


def cmd_status(args: argparse.Namespace) -> int:
    params = {"RequestDate": args.date, "MessageId": args.message_id, "ToEmailAddress": args.to, **_page(args)}

    async def work(config: Config, store: Store) -> int:
        result = await ses_admin.query_status(store, ses_admin.status_query(params))
        return _emit(args, result, "EmailStatusList", STATUS_COLUMNS)
    return _run(args, work)


# -- blocklist -------------------------------------------------------------------------------------------


def cmd_blocklist_list(args: argparse.Namespace) -> int:
    params = {"StartDate": args.start, "EndDate": args.end, "EmailAddress": args.email, **_page(args)}

    async def work(config: Config, store: Store) -> int:
        result = await ses_admin.list_blocklist(store, params)
        return _emit(args, result, "BlackList", ["EmailAddress", "BounceTime", "ExpireTime", "IspDesc"])
    return _run(args, work)


def cmd_blocklist_add(args: argparse.Namespace) -> int:
    async def work(config: Config, store: Store) -> int:
        ttl = ses_settings.global_settings(config).blocklist_ttl
        for email in ses_admin.addresses(args.emails):
            await suppression.blocklist_add(store, email, args.reason, ttl=ttl)
            print(f"blocklisted {email} for {ttl / 86400:g} days")
        return 0
    return _run(args, work)


def cmd_blocklist_remove(args: argparse.Namespace) -> int:
    async def work(config: Config, store: Store) -> int:
        result = await ses_admin.delete_blocklist(store, ses_admin.addresses(args.emails))
        for email in result["Removed"]:
            print(f"removed {email}")
        for email in result["NotFound"]:
            print(f"not on the blocklist: {email}", file=sys.stderr)
        return 1 if result["NotFound"] else 0
    return _run(args, work)


# -- unsubscribes ----------------------------------------------------------------------------------------


def cmd_unsub_list(args: argparse.Namespace) -> int:
    params = {"Domain": args.domain, "EmailAddress": args.email, **_page(args)}

    async def work(config: Config, store: Store) -> int:
        result = await ses_admin.list_unsubscribes(store, ses_admin.sender_domains(config, params), params)
        return _emit(args, result, "Unsubscribes", ["Domain", "EmailAddress", "Source", "UnsubscribeTime"])
    return _run(args, work)


def cmd_unsub_change(args: argparse.Namespace) -> int:
    async def work(config: Config, store: Store) -> int:
        domain = ses_admin.sender_domains(config, {"Domain": args.domain})[0]
        email = ses_admin.addresses(args.email, "EmailAddress")[0]
        if args.action == "add":
            await suppression.unsubscribe_add(store, domain, email, "cli")
            print(f"{email} unsubscribed from {domain}")
            return 0
        if await suppression.unsubscribe_remove(store, domain, email):
            print(f"{email} may receive mail from {domain} again")
            return 0
        print(f"{email} was not unsubscribed from {domain}", file=sys.stderr)
        return 1
    return _run(args, work)


# -- accounts -------------------------------------------------------------------------------------------------


def cmd_account(args: argparse.Namespace) -> int:
    async def work(config: Config, store: Store) -> int:
        if args.name not in config.accounts:
            raise ParamError("ResourceNotFound", f"no account {args.name!r} in {config.path}")
        if args.action == "pause":
            await suppression.pause_account(store, args.name, args.reason)
        elif args.action == "resume":
            was = await suppression.resume_account(store, args.name)
            print(f"account {args.name} resumed" if was else f"account {args.name} was not paused")
        info = await ses_admin.account_info(config, store, args.name, time.time(), None)
        if args.json or args.action == "show":
            print(json.dumps(info, indent=2))
        elif args.action == "pause":
            print(f"account {args.name} paused: MAIL gets 451 4.7.1 until `ses-gateway account resume {args.name}`")
        return 0
    return _run(args, work)


# -- templates ------------------------------------------------------------------------------------------------


def cmd_template_check(args: argparse.Namespace) -> int:
    target: str = args.template
    if not os.path.exists(target) and target.isdigit():
        template_dir = ses_settings.global_settings(load(args.config)).template_dir
        try:
            template = ses_templates.load(template_dir, int(target))
        except ses_templates.TemplateError as exc:
            print(f"ses-gateway: {exc}", file=sys.stderr)
            return 1
    else:
        try:
            template = ses_templates.load_file(target)
        except ses_templates.TemplateError as exc:
            print(f"ses-gateway: {exc}", file=sys.stderr)
            return 1
    findings = ses_templates.review(template)
    failed = [f for f in findings if f.status == "fail"]
    if args.json:
        print(json.dumps({**ses_templates.summary(template), "passed": not failed,
                          "findings": [f.__dict__ for f in findings]}, indent=2))
    else:
        info = ses_templates.summary(template)
        print(f"template {info['id'] or info['path']} ({info['name']}): parts {', '.join(info['parts'])}; "
              f"variables {', '.join(info['variables']) or '(none)'}")
        for finding in findings:
            print(f"  {finding.status.upper():4}  {finding.criterion}: {finding.detail}")
        print("passes the SES review criteria" if not failed else f"fails {len(failed)} review criteria")
    return 1 if failed else 0


# -- registration -----------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    status = sub.add_parser("status", help="status records of one day (GetSendEmailStatus)")
    _config(status)
    status.add_argument("--date", "--request-date", dest="date", default=time.strftime("%Y-%m-%d", time.gmtime()),
                        help="RequestDate YYYY-MM-DD in UTC (default today)")
    status.add_argument("--message-id", help="MessageId from the 250 reply")
    status.add_argument("--to", help="ToEmailAddress")
    _paging(status)
    status.set_defaults(func=cmd_status)

    blocklist = sub.add_parser("blocklist", help="the hard-bounce blocklist (all accounts)")
    bsub = blocklist.add_subparsers(dest="action", required=True)
    listing = bsub.add_parser("list", help="list entries (ListBlackEmailAddress)")
    _config(listing)
    listing.add_argument("--start", help="StartDate YYYY-MM-DD")
    listing.add_argument("--end", help="EndDate YYYY-MM-DD")
    listing.add_argument("--email", help="EmailAddress or prefix")
    _paging(listing)
    listing.set_defaults(func=cmd_blocklist_list)
    add = bsub.add_parser("add", help="blocklist addresses for blocklist_ttl")
    _config(add)
    add.add_argument("emails", nargs="+")
    add.add_argument("--reason", default="added by the operator")
    add.set_defaults(func=cmd_blocklist_add)
    remove = bsub.add_parser("remove", help="remove addresses (DeleteBlackList)")
    _config(remove)
    remove.add_argument("emails", nargs="+")
    remove.set_defaults(func=cmd_blocklist_remove)

    unsub = sub.add_parser("unsubscribes", help="recipients unsubscribed from a sender domain")
    usub = unsub.add_subparsers(dest="action", required=True)
    ulist = usub.add_parser("list")
    _config(ulist)
    ulist.add_argument("--domain", help="sender domain (default: every account domain)")
    ulist.add_argument("--email", help="address or prefix")
    _paging(ulist)
    ulist.set_defaults(func=cmd_unsub_list)
    for action in ("add", "remove"):
        change = usub.add_parser(action)
        _config(change)
        change.add_argument("domain", help="sender domain")
        change.add_argument("email", help="recipient address")
        change.set_defaults(func=cmd_unsub_change)

    account = sub.add_parser("account", help="show, pause or resume an account")
    asub = account.add_subparsers(dest="action", required=True)
    for action, text in (("show", "limits, today's counters, paused flag (JSON)"),
                         ("pause", "pause: MAIL gets 451 4.7.1 FailedOperation.HighRejectionRate"),
                         ("resume", "resume a paused account")):
        parser = asub.add_parser(action, help=text)
        _config(parser)
        parser.add_argument("name")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--reason", default="paused by the operator")
        parser.set_defaults(func=cmd_account)

    template = sub.add_parser("template", help="SES templates")
    tsub = template.add_subparsers(dest="action", required=True)
    check = tsub.add_parser("check", help="apply the SES review criteria to a template file or id")
    _config(check)
    check.add_argument("template", help="a .toml/.html/.txt file, or a numeric id in template_dir")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_template_check)
