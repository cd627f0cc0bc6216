"""Shared pieces of the HTTP listener: admin authentication and JSON errors.

Admin routes (``/v1/...``) need ``Authorization: Bearer <[http] admin_token>``; without a
configured token they answer 403 (an API without a token would be open to anyone who reaches
the port). Errors are JSON ``{"error": {"code": ..., "message": ...}}``, never a traceback.
"""
from __future__ import annotations

import functools
import hmac
from typing import Any, Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GATEWAY_KEY: web.AppKey[Any] = web.AppKey("gateway", object)


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def gateway_of(request: web.Request) -> Any:
    return request.app[GATEWAY_KEY]


def admin(handler: Handler) -> Handler:
    """Decorator: the request must carry the admin bearer token (constant-time compare)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        gateway = gateway_of(request)
        http = gateway.config.http
        token = http.admin_token.value if http is not None and http.admin_token is not None else None
        if token is None:
            return json_error(403, "AdminApiDisabled", "set [http] admin_token to use the admin API")
        supplied = request.headers.get("Authorization", "")
        if not supplied.startswith("Bearer ") or not hmac.compare_digest(supplied[7:].encode(), token.encode()):
            return json_error(401, "Unauthorized", "missing or wrong bearer token")
        return await handler(request)

    return wrapped


def int_param(request: web.Request, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    """A query parameter as an integer; raises a 400 JSON error naming it."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=_error_text("InvalidParameterValue", f"{name} must be an integer"),
                                 content_type="application/json") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise web.HTTPBadRequest(text=_error_text("InvalidParameterValue", f"{name} must be {bound}"),
                                 content_type="application/json")
    return value


def _error_text(code: str, message: str) -> str:
    import json

    return json.dumps({"error": {"code": code, "message": message}})


# -- OpenAPI ------------------------------------------------------------------------------------
# Admin routes describe themselves with @operation; /v1/openapi.json (admin_api plugin) is
# built from this registry, so a plugin's routes are documented where they are written.
OPERATIONS: list[dict[str, Any]] = []


def operation(method: str, path: str, *, summary: str, parameters: list[dict[str, Any]] | None = None,
              request_body: dict[str, Any] | None = None, responses: dict[str, Any] | None = None,
              tag: str = "admin") -> Callable[[Handler], Handler]:
    """Register an admin route's OpenAPI 3.1 operation. ``parameters`` use OpenAPI's shape,
    e.g. ``{"name": "Limit", "in": "query", "schema": {"type": "integer", "maximum": 100}}``."""

    def register(handler: Handler) -> Handler:
        entry = {"method": method.lower(), "path": path, "summary": summary, "tag": tag,
                 "parameters": parameters or [], "requestBody": request_body,
                 "responses": responses or {"200": {"description": "OK"}}}
        if not any(o["method"] == entry["method"] and o["path"] == path for o in OPERATIONS):
            OPERATIONS.append(entry)
        return handler

    return register


def openapi_document(title: str, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        item: dict[str, Any] = {"summary": op["summary"], "tags": [op["tag"]], "parameters": op["parameters"],
                                "responses": {**op["responses"],
                                              "400": {"description": "bad parameter (JSON error)"},
                                              "401": {"description": "missing or wrong bearer token"}},
                                "security": [{"bearer": []}]}
        if op["requestBody"]:
            item["requestBody"] = op["requestBody"]
        paths.setdefault(op["path"], {})[op["method"]] = item
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}
