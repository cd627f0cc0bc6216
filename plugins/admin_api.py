"""admin_api: the admin HTTP API under ``/v1`` on the ``[http]`` listener (issue 4).

Hooks: ``gateway_http_routes``. Every route except ``/v1/openapi.json`` needs
``Authorization: Bearer <[http] admin_token>`` (403 when no token is configured). The OpenAPI
document is public, as SES publishes its API reference: it describes routes, never data.
Requests and responses are JSON; bad parameters answer 400 ``{"error": {"code", "message"}}``
with the SES error code (``MissingParameter``, ``FailedOperation.InvalidLimit`` …).

| method | path | what |
|---|---|---|
| GET | /v1/status | ``GetSendEmailStatus``: RequestDate, MessageId, ToEmailAddress, Offset, Limit |
| GET | /v1/blocklist | ``ListBlackEmailAddress``: StartDate, EndDate, EmailAddress, Offset, Limit |
| POST | /v1/blocklist | add ``{"EmailAddress", "Reason"}`` |
| DELETE | /v1/blocklist | ``DeleteBlackList`` ``{"EmailAddressList": [...]}`` |
| GET/POST/DELETE | /v1/unsubscribes | per sender domain: Domain, EmailAddress |
| GET | /v1/accounts, /v1/accounts/{name} | limits, today's counters, backlog, paused flag |
| POST | /v1/accounts/{name}/pause, /resume | pause or resume an account |
| GET | /v1/openapi.json | OpenAPI 3.1 of every ``@operation`` route |
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import __version__, hookimpl, ses_admin, ses_limits, ses_settings, suppression
from gateway.http import admin, gateway_of, json_error, openapi_document, operation
from gateway.ses_admin import ParamError

if TYPE_CHECKING:
    from gateway.server import Gateway


def _q(name: str, description: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": kind, **extra}}


PAGING = [_q("Offset", "skip this many", "integer", minimum=0),
          _q("Limit", "at most this many (<= 100)", "integer", minimum=1, maximum=100)]


def _bad(exc: ParamError) -> web.Response:
    return json_error(404 if exc.code == "ResourceNotFound" else 400, exc.code, exc.message)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ParamError("InvalidParameter", "the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ParamError("InvalidParameter", "the request body must be a JSON object")
    return data


# -- status --------------------------------------------------------------------------------------------


@operation("GET", "/v1/status", summary="Status records of one day (GetSendEmailStatus)", parameters=[
    _q("RequestDate", "YYYY-MM-DD (UTC), within the last 30 days; required"),
    _q("MessageId", "the MessageId of the 250 reply"), _q("ToEmailAddress", "one recipient"), *PAGING])
@admin
async def get_status(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    try:
        query = ses_admin.status_query(request.query)
    except ParamError as exc:
        return _bad(exc)
    return web.json_response(await ses_admin.query_status(gateway.store, query))


# -- blocklist ----------------------------------------------------------------------------------------


@operation("GET", "/v1/blocklist", summary="Blocklisted addresses (ListBlackEmailAddress)", parameters=[
    _q("StartDate", "bounced on or after (YYYY-MM-DD)"), _q("EndDate", "bounced on or before (YYYY-MM-DD)"),
    _q("EmailAddress", "address or prefix"), *PAGING])
@admin
async def get_blocklist(request: web.Request) -> web.Response:
    try:
        return web.json_response(await ses_admin.list_blocklist(gateway_of(request).store, request.query))
    except ParamError as exc:
        return _bad(exc)


@operation("POST", "/v1/blocklist", summary="Blocklist an address for blocklist_ttl (14 days)",
           request_body={"content": {"application/json": {"schema": {"type": "object", "required": ["EmailAddress"],
                                                                     "properties": {"EmailAddress": {"type": "string"},
                                                                                    "Reason": {"type": "string"}}}}}})
@admin
async def post_blocklist(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    try:
        body = await _body(request)
        emails = ses_admin.addresses(body.get("EmailAddress"), "EmailAddress")
    except ParamError as exc:
        return _bad(exc)
    ttl = ses_settings.global_settings(gateway.config).blocklist_ttl
    for email in emails:
        await suppression.blocklist_add(gateway.store, email, str(body.get("Reason") or "added by the admin API"), ttl=ttl)
    return web.json_response({"Added": emails})


@operation("DELETE", "/v1/blocklist", summary="Remove addresses from the blocklist (DeleteBlackList)",
           request_body={"content": {"application/json": {"schema": {
               "type": "object", "required": ["EmailAddressList"],
               "properties": {"EmailAddressList": {"type": "array", "items": {"type": "string"}}}}}}})
@admin
async def delete_blocklist(request: web.Request) -> web.Response:
    try:
        emails = ses_admin.addresses((await _body(request)).get("EmailAddressList"))
    except ParamError as exc:
        return _bad(exc)
    return web.json_response(await ses_admin.delete_blocklist(gateway_of(request).store, emails))


# -- unsubscribes -----------------------------------------------------------------------------------------


@operation("GET", "/v1/unsubscribes", summary="Unsubscribed recipients per sender domain", parameters=[
    _q("Domain", "sender domain (default: every account domain)"), _q("EmailAddress", "address or prefix"), *PAGING])
@admin
async def get_unsubscribes(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    try:
        domains = ses_admin.sender_domains(gateway.config, request.query)
        return web.json_response(await ses_admin.list_unsubscribes(gateway.store, domains, request.query))
    except ParamError as exc:
        return _bad(exc)


UNSUB_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["Domain", "EmailAddress"],
    "properties": {"Domain": {"type": "string"}, "EmailAddress": {"type": "string"}}}}}}


async def _unsub_target(request: web.Request) -> tuple[str, str]:
    body = await _body(request)
    if not body.get("Domain"):
        raise ParamError("MissingParameter", "Domain is required")
    domain = ses_admin.sender_domains(gateway_of(request).config, body)[0]
    return domain, ses_admin.addresses(body.get("EmailAddress"), "EmailAddress")[0]


@operation("POST", "/v1/unsubscribes", summary="Record an unsubscription", request_body=UNSUB_BODY)
@admin
async def post_unsubscribes(request: web.Request) -> web.Response:
    try:
        domain, email = await _unsub_target(request)
    except ParamError as exc:
        return _bad(exc)
    await suppression.unsubscribe_add(gateway_of(request).store, domain, email, "admin-api")
    return web.json_response({"Domain": domain, "EmailAddress": email, "Unsubscribed": True})


@operation("DELETE", "/v1/unsubscribes", summary="Remove an unsubscription", request_body=UNSUB_BODY)
@admin
async def delete_unsubscribes(request: web.Request) -> web.Response:
    try:
        domain, email = await _unsub_target(request)
    except ParamError as exc:
        return _bad(exc)
    removed = await suppression.unsubscribe_remove(gateway_of(request).store, domain, email)
    return web.json_response({"Domain": domain, "EmailAddress": email, "Removed": removed})


# -- accounts --------------------------------------------------------------------------------------------------


async def _account(gateway: "Gateway", name: str) -> dict[str, Any]:
    now = ses_settings.clock_of(gateway.stash)()
    return await ses_admin.account_info(gateway.config, gateway.store, name, now, ses_limits.backlog(gateway, name))


@operation("GET", "/v1/accounts", summary="Every account with its limits, counters and paused flag")
@admin
async def get_accounts(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    return web.json_response({"Accounts": [await _account(gateway, name) for name in gateway.config.accounts]})


NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]


@operation("GET", "/v1/accounts/{name}", summary="One account: limits, today's counters, backlog, paused flag",
           parameters=NAME)
@admin
async def get_account(request: web.Request) -> web.Response:
    try:
        return web.json_response(await _account(gateway_of(request), request.match_info["name"]))
    except ParamError as exc:
        return _bad(exc)


@operation("POST", "/v1/accounts/{name}/pause", summary="Pause an account (MAIL gets 451 4.7.1)", parameters=NAME)
@admin
async def pause_account(request: web.Request) -> web.Response:
    gateway, name = gateway_of(request), request.match_info["name"]
    if name not in gateway.config.accounts:
        return json_error(404, "ResourceNotFound", f"no account {name!r}")
    await suppression.pause_account(gateway.store, name, "paused by the admin API")
    return web.json_response(await _account(gateway, name))


@operation("POST", "/v1/accounts/{name}/resume", summary="Resume a paused account", parameters=NAME)
@admin
async def resume_account(request: web.Request) -> web.Response:
    gateway, name = gateway_of(request), request.match_info["name"]
    if name not in gateway.config.accounts:
        return json_error(404, "ResourceNotFound", f"no account {name!r}")
    await suppression.resume_account(gateway.store, name)
    return web.json_response(await _account(gateway, name))


# -- OpenAPI -------------------------------------------------------------------------------------------------------


async def get_openapi(request: web.Request) -> web.Response:
    """Public on purpose (see the module docstring)."""
    document = openapi_document("ses-gateway admin API", __version__)
    return web.json_response(document)


@hookimpl
def gateway_http_routes(gateway: "Gateway") -> list[Any]:
    return [
        web.get("/v1/openapi.json", get_openapi),
        web.get("/v1/status", get_status),
        web.get("/v1/blocklist", get_blocklist),
        web.post("/v1/blocklist", post_blocklist),
        web.delete("/v1/blocklist", delete_blocklist),
        web.get("/v1/unsubscribes", get_unsubscribes),
        web.post("/v1/unsubscribes", post_unsubscribes),
        web.delete("/v1/unsubscribes", delete_unsubscribes),
        web.get("/v1/accounts", get_accounts),
        web.get("/v1/accounts/{name}", get_account),
        web.post("/v1/accounts/{name}/pause", pause_account),
        web.post("/v1/accounts/{name}/resume", resume_account),
    ]
