"""Queue administration over the admin API: what ``mailq``, ``postqueue``, ``postsuper`` and
``qshape`` do for Postfix, for the running daemon.

The queue belongs to the scheduler of the running process; the CLI (``ses-gateway queue``,
:mod:`gateway.queue_cli`) calls these routes instead of touching the spool, so an operator
action never races a delivery. Routes are registered by the built-in ``metrics`` plugin.

=======  ================================  =====================================================
Method   Path                              What
=======  ================================  =====================================================
GET      /v1/queue                         list (``domain``, ``account``, ``deferred``, ``held``)
GET      /v1/queue/summary                 recipients by destination domain and age (qshape)
GET      /v1/queue/{id}                    envelope, per-recipient state, last error, next attempt
POST     /v1/queue/retry                   attempt now: ``all=1`` or ``domain=D`` (postqueue -f/-s)
POST     /v1/queue/{id}/retry              attempt one message now (postqueue -i)
POST     /v1/queue/{id}/hold               no attempts until released (postsuper -h)
POST     /v1/queue/{id}/release            release and attempt now (postsuper -H)
DELETE   /v1/queue/{id}                    drop, a ``dropped`` event per recipient (postsuper -d)
=======  ================================  =====================================================
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.http import admin, gateway_of, int_param, json_error, operation

if TYPE_CHECKING:
    from gateway.spool import QueuedMessage

# qshape's default buckets (minutes): 0-5, 5-10, 10-20, ... doubling, and the rest.
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
BUCKET_NAMES = tuple(f"{lo}-{hi}m" for lo, hi in zip((0, *AGE_BUCKETS), AGE_BUCKETS)) + (f"{AGE_BUCKETS[-1]}m+",)

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "MessageId"}


def describe(message: "QueuedMessage", now: float, *, full: bool = False) -> dict[str, Any]:
    pending = [r for r in message.recipients if not r.final]
    entry: dict[str, Any] = {
        "id": message.message_id, "account": message.account, "sender": message.sender,
        "received": message.received, "age": round(now - message.received, 1), "size": message.size,
        "held": message.held, "pending": len(pending),
        "deferred": any(r.status == "deferred" for r in pending),
        "next_attempt": min((r.next_attempt for r in pending if r.status == "deferred"), default=None),
        "recipients": [{"recipient": r.recipient, "status": r.status, "attempts": r.attempts,
                        "next_attempt": r.next_attempt or None, "last_error": r.last_error}
                       for r in message.recipients],
    }
    if full:
        entry["meta"] = {k: v for k, v in message.meta.items() if k in
                         ("subject", "smtp_message_id", "from_header", "template_id", "tags", "peer", "session", "dsn_for")}
        entry["path"] = message.path
    return entry


def _matches(message: "QueuedMessage", domain: str | None, account: str | None, deferred: bool, held: bool) -> bool:
    pending = [r for r in message.recipients if not r.final]
    if domain and not any(r.recipient.rpartition("@")[2].lower() == domain for r in pending):
        return False
    if account and message.account != account:
        return False
    if deferred and not any(r.status == "deferred" for r in pending):
        return False
    return not held or message.held


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


@operation("GET", "/v1/queue", summary="List queued messages (mailq)", tag="queue", parameters=[
    {"name": "domain", "in": "query", "schema": {"type": "string"}},
    {"name": "account", "in": "query", "schema": {"type": "string"}},
    {"name": "deferred", "in": "query", "schema": {"type": "boolean"}},
    {"name": "held", "in": "query", "schema": {"type": "boolean"}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 10000}}])
@admin
async def list_queue(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    limit = int_param(request, "limit", 1000, minimum=1, maximum=10000)
    domain = request.query.get("domain", "").lower() or None
    now = time.time()
    found = [m for m in gateway.scheduler.messages.values()
             if _matches(m, domain, request.query.get("account") or None, _flag(request, "deferred"), _flag(request, "held"))]
    found.sort(key=lambda m: m.received)
    return web.json_response({"total": len(found), "messages": [describe(m, now) for m in found[:limit]]})


@operation("GET", "/v1/queue/summary", summary="Queued recipients by destination domain and age (qshape)", tag="queue")
@admin
async def summary(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    now = time.time()
    domains: dict[str, list[int]] = {}
    held = 0
    for message in gateway.scheduler.messages.values():
        held += message.held
        minutes = (now - message.received) / 60
        bucket = next((i for i, edge in enumerate(AGE_BUCKETS) if minutes < edge), len(AGE_BUCKETS))
        for state in message.recipients:
            if not state.final:
                row = domains.setdefault(state.recipient.rpartition("@")[2].lower(), [0] * len(BUCKET_NAMES))
                row[bucket] += 1
    rows = sorted(domains.items(), key=lambda item: (-sum(item[1]), item[0]))
    return web.json_response({
        "buckets": list(BUCKET_NAMES), "messages": len(gateway.scheduler.messages), "held_messages": held,
        "recipients": sum(sum(row) for _, row in rows), "oldest": gateway.scheduler.oldest(),
        "domains": [{"domain": name, "total": sum(row), "by_age": row} for name, row in rows],
    })


@operation("GET", "/v1/queue/{id}", summary="One queued message", tag="queue", parameters=[_ID])
@admin
async def show(request: web.Request) -> web.Response:
    message = gateway_of(request).scheduler.messages.get(request.match_info["id"])
    if message is None:
        return json_error(404, "ResourceNotFound.MessageNotQueued", "no such message in the queue")
    return web.json_response(describe(message, time.time(), full=True))


@operation("POST", "/v1/queue/retry", summary="Attempt queued messages now (postqueue -f / -s DOMAIN)", tag="queue",
           parameters=[{"name": "all", "in": "query", "schema": {"type": "boolean"}},
                       {"name": "domain", "in": "query", "schema": {"type": "string"}}])
@admin
async def retry_many(request: web.Request) -> web.Response:
    scheduler = gateway_of(request).scheduler
    domain = request.query.get("domain", "").lower() or None
    if not domain and not _flag(request, "all"):
        return json_error(400, "MissingParameter", "give all=1 or domain=DOMAIN")
    ids = [m.message_id for m in list(scheduler.messages.values())
           if not m.held and _matches(m, domain, None, False, False)]
    retried = [i for i in ids if scheduler.retry_now(i)]
    return web.json_response({"retried": len(retried), "ids": retried})


@operation("POST", "/v1/queue/{id}/retry", summary="Attempt one message now (postqueue -i)", tag="queue", parameters=[_ID])
@admin
async def retry_one(request: web.Request) -> web.Response:
    scheduler = gateway_of(request).scheduler
    message_id = request.match_info["id"]
    message = scheduler.messages.get(message_id)
    if message is None:
        return json_error(404, "ResourceNotFound.MessageNotQueued", "no such message in the queue")
    if message.held:
        return json_error(409, "FailedOperation.MessageHeld", "the message is on hold: release it first")
    scheduler.retry_now(message_id)
    return web.json_response({"id": message_id, "retried": True})


async def _set_held(request: web.Request, held: bool) -> web.Response:
    message_id = request.match_info["id"]
    if not gateway_of(request).scheduler.set_held(message_id, held):
        return json_error(404, "ResourceNotFound.MessageNotQueued", "no such message in the queue")
    return web.json_response({"id": message_id, "held": held})


@operation("POST", "/v1/queue/{id}/hold", summary="Hold a message (postsuper -h)", tag="queue", parameters=[_ID])
@admin
async def hold(request: web.Request) -> web.Response:
    return await _set_held(request, True)


@operation("POST", "/v1/queue/{id}/release", summary="Release a held message (postsuper -H)", tag="queue", parameters=[_ID])
@admin
async def release(request: web.Request) -> web.Response:
    return await _set_held(request, False)


@operation("DELETE", "/v1/queue/{id}", summary="Delete a message; a dropped event per recipient (postsuper -d)",
           tag="queue", parameters=[_ID, {"name": "reason", "in": "query", "schema": {"type": "string"}}])
@admin
async def delete(request: web.Request) -> web.Response:
    message_id = request.match_info["id"]
    reason = request.query.get("reason") or "deleted by the administrator"
    dropped = await gateway_of(request).scheduler.delete(message_id, reason[:200])
    if dropped is None:
        return json_error(404, "ResourceNotFound.MessageNotQueued", "no such message in the queue")
    return web.json_response({"id": message_id, "deleted": True, "dropped": dropped})


def routes() -> list[web.RouteDef]:
    # /summary and /retry before /{id} so they are not taken for message ids.
    return [
        web.get("/v1/queue", list_queue), web.get("/v1/queue/summary", summary),
        web.post("/v1/queue/retry", retry_many), web.get("/v1/queue/{id}", show),
        web.post("/v1/queue/{id}/retry", retry_one), web.post("/v1/queue/{id}/hold", hold),
        web.post("/v1/queue/{id}/release", release), web.delete("/v1/queue/{id}", delete),
    ]
