"""Operations behind the admin API and the CLI (one implementation for both), with SES
parameter names and errors:

- ``GetSendEmailStatus`` (§4): RequestDate (YYYY-MM-DD, UTC, last 30 days), MessageId,
  ToEmailAddress, Offset, Limit (<= 100) → ``EmailStatusList``.
- ``ListBlackEmailAddress`` / ``DeleteBlackList`` (§7.1): StartDate, EndDate, EmailAddress
  (prefix), Offset, Limit → ``BlackList[{EmailAddress, BounceTime, IspDesc, ExpireTime}]``, ``TotalCount``.
- unsubscribes per sender domain, and an account's limits, counters and paused flag.

Bad parameters raise :class:`ParamError` (SES code + message); callers turn it into a 400
JSON error or one line on stderr.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

from gateway import ses_limits, ses_settings, suppression
from gateway.store.base import Store

if TYPE_CHECKING:
    from gateway.config import Config

RETENTION_DAYS = 30
MAX_LIMIT = 100
SCAN_PAGE = 1000
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ParamError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _date(params: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value in (None, ""):
        if required:
            raise ParamError("MissingParameter", f"{name} is required (YYYY-MM-DD)")
        return None
    text = str(value)
    try:
        if not _DATE.match(text):
            raise ValueError
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise ParamError("InvalidParameterValue.WrongDate", f"{name} must be a date YYYY-MM-DD, got {text!r}") from None
    return text


def _int(params: Mapping[str, Any], name: str, default: int, minimum: int, maximum: int | None, code: str) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise ParamError("InvalidParameterValue", f"{name} must be an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ParamError(code, f"{name} must be {bound}")
    return number


def _paging(params: Mapping[str, Any]) -> tuple[int, int]:
    return (_int(params, "Offset", 0, 0, None, "InvalidParameterValue"),
            _int(params, "Limit", MAX_LIMIT, 1, MAX_LIMIT, "FailedOperation.InvalidLimit"))


# -- status records (GetSendEmailStatus) ------------------------------------------------------------


@dataclass(frozen=True)
class StatusQuery:
    date: str
    message_id: str | None
    recipient: str | None
    offset: int
    limit: int


def status_query(params: Mapping[str, Any], *, now: float | None = None) -> StatusQuery:
    date = _date(params, "RequestDate", required=True)
    assert date is not None
    day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    now = time.time() if now is None else now
    if day > now or day < now - (RETENTION_DAYS + 1) * 86400:
        raise ParamError("FailedOperation.NotSupportDate", f"RequestDate must be within the last {RETENTION_DAYS} days")
    offset, limit = _paging(params)
    message_id = str(params.get("MessageId") or "").strip() or None
    recipient = str(params.get("ToEmailAddress") or "").strip() or None
    return StatusQuery(date, message_id, recipient, offset, limit)


async def query_status(store: Store, query: StatusQuery) -> dict[str, Any]:
    rows = await store.query_status(date=query.date, message_id=query.message_id, recipient=query.recipient,
                                    offset=query.offset, limit=query.limit)
    records = []
    for row in rows:
        record = {"MessageId": row.get("MessageId"), "ToEmailAddress": row.get("ToEmailAddress"),
                  "FromEmailAddress": row.get("FromEmailAddress", "")}
        record.update({k: v for k, v in row.items() if k not in record})
        record["UserComplainted"] = record.get("UserComplained", False)     # SES keeps the old spelling too
        records.append(record)
    return {"EmailStatusList": records, "RequestDate": query.date, "Offset": query.offset, "Limit": query.limit}


# -- blocklist (ListBlackEmailAddress / DeleteBlackList) ---------------------------------------------


async def _scan(store: Store, key: str, prefix: str) -> list[tuple[str, dict[str, Any], float | None]]:
    out: list[tuple[str, dict[str, Any], float | None]] = []
    while True:
        page = await store.set_members(key, prefix=prefix, offset=len(out), limit=SCAN_PAGE)
        out.extend(page)
        if len(page) < SCAN_PAGE:
            return out


def _utc(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) if timestamp else ""


async def list_blocklist(store: Store, params: Mapping[str, Any]) -> dict[str, Any]:
    start, end = _date(params, "StartDate"), _date(params, "EndDate")
    if start and end and start > end:
        raise ParamError("InvalidParameterValue", "StartDate must not be after EndDate")
    offset, limit = _paging(params)
    prefix = str(params.get("EmailAddress") or "").strip().lower()
    rows = []
    for member, data, expires in await _scan(store, "blocklist", prefix):
        day = time.strftime("%Y-%m-%d", time.gmtime(data.get("added") or 0))
        if (start and day < start) or (end and day > end):
            continue
        rows.append({"EmailAddress": member, "BounceTime": _utc(data.get("added")), "IspDesc": data.get("reason", ""),
                     "ExpireTime": _utc(expires)})
    return {"BlackList": rows[offset:offset + limit], "TotalCount": len(rows)}


def addresses(value: Any, name: str = "EmailAddressList") -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and "@" in v for v in value):
        raise ParamError("InvalidParameterValue", f"{name} must be a non-empty list of email addresses")
    return [v.strip().lower() for v in value]


async def delete_blocklist(store: Store, emails: list[str]) -> dict[str, Any]:
    removed = [email for email in emails if await suppression.blocklist_remove(store, email)]
    return {"Removed": removed, "NotFound": [e for e in emails if e not in removed]}


# -- unsubscribes -----------------------------------------------------------------------------------------


def sender_domains(config: "Config", params: Mapping[str, Any]) -> list[str]:
    domain = str(params.get("Domain") or "").strip().lower()
    if domain:
        if not re.fullmatch(r"[a-z0-9.-]+\.[a-z0-9-]+", domain):
            raise ParamError("InvalidParameterValue", f"Domain {domain!r} is not a domain name")
        return [domain]
    return sorted({d for account in config.accounts.values() for d in account.domains})


async def list_unsubscribes(store: Store, domains: list[str], params: Mapping[str, Any]) -> dict[str, Any]:
    offset, limit = _paging(params)
    prefix = str(params.get("EmailAddress") or "").strip().lower()
    rows = []
    for domain in domains:
        for member, data, _ in await _scan(store, f"unsub:{domain}", prefix):
            rows.append({"Domain": domain, "EmailAddress": member, "Source": data.get("source", ""),
                         "UnsubscribeTime": _utc(data.get("added"))})
    return {"Unsubscribes": rows[offset:offset + limit], "TotalCount": len(rows)}


# -- accounts ----------------------------------------------------------------------------------------------


async def account_info(config: "Config", store: Store, name: str, now: float, backlog: int | None) -> dict[str, Any]:
    account = config.accounts.get(name)
    if account is None:
        raise ParamError("ResourceNotFound", f"no account {name!r}")
    settings = ses_settings.for_account(config, name)
    paused = await suppression.account_paused(store, name)
    info: dict[str, Any] = {"Name": name, "Domains": list(account.domains), "PolicyEnabled": settings is not None,
                            "Paused": paused is not None, "PausedReason": (paused or {}).get("reason", ""),
                            "PausedSince": _utc((paused or {}).get("since"))}
    if settings is not None:
        glob = ses_settings.global_settings(config)
        info["Limits"] = ses_limits.limits_of(settings)
        info["Counters"] = await ses_limits.counters(store, name, settings, glob, now)
        if backlog is not None:
            info["Counters"]["Backlog"] = backlog
    return info
