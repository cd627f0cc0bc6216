"""HTTP endpoints behind the injected links, on the ``[http]`` listener.

- ``GET /u/TOKEN`` — confirmation page with a button; changes nothing (link scanners and
  prefetchers must not unsubscribe anyone: reliability.md §8 row 65).
- ``POST /u/TOKEN`` — records the unsubscription and answers ``200`` with a page, never a
  redirect (RFC 8058 §3.2: "many browsers have turned redirected HTTP POSTs into GETs").
  Any body is accepted — RFC 8058's ``List-Unsubscribe=One-Click`` (urlencoded or
  multipart) or the page's form; the token is the only authority, so no cookie, login or
  CSRF token is needed (RFC 8058: the POST "MUST NOT include cookies …"). Idempotent.
- ``GET /o/TOKEN.gif`` — 1×1 transparent GIF, ``Cache-Control: no-store``; an ``open``.
- ``GET /c/TOKEN`` — ``302`` to the link signed into the token (no open redirect); a ``click``.

HEAD gets the same answer but is never counted. Every bad, forged, truncated, expired or
wrong-kind token gets the same bare ``404`` (no oracle) and changes nothing. Mail-privacy
proxies (Apple Mail Privacy Protection) and link scanners fetch pixels and links on
delivery: those GETs count as opens and clicks, as at every ESP.
"""
from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.http import gateway_of
from gateway.unsub_i18n import texts
from gateway.unsub_pages import confirm_page, done_page
from gateway.unsub_records import engagement, unsubscribe
from gateway.unsub_settings import current
from gateway.unsub_tokens import Claims, TokenCodec

if TYPE_CHECKING:
    from gateway.server import Gateway

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")   # 1×1 transparent GIF89a

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",           # the token is in the URL
    "X-Robots-Tag": "noindex, nofollow",
    "X-Frame-Options": "DENY",                  # no clickjacking of the button
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}


def _not_found() -> web.Response:
    return web.Response(status=404, text="Not Found", headers={"Cache-Control": "no-store"})


def _claims(request: web.Request, kind: str) -> tuple["Gateway", Claims | None]:
    gateway = gateway_of(request)
    settings = current(gateway)
    if settings is None:
        return gateway, None
    return gateway, TokenCodec(settings.secrets).decode(request.match_info["token"], kind=kind, now=time.time())


def _page(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


async def unsubscribe_get(request: web.Request) -> web.StreamResponse:
    _, claims = _claims(request, "u")
    if claims is None:
        return _not_found()
    return _page(confirm_page(texts(claims.lang), email=claims.recipient, domain=claims.domain))


async def unsubscribe_post(request: web.Request) -> web.StreamResponse:
    gateway, claims = _claims(request, "u")
    if claims is None:
        return _not_found()
    body = await request.read()          # bounded by the app's client_max_size
    one_click = b"List-Unsubscribe=One-Click" in body
    await unsubscribe(gateway, recipient=claims.recipient, domain=claims.domain, message_id=claims.message_id,
                      source="one-click" if one_click else "https", useragent=request.headers.get("User-Agent", ""))
    return _page(done_page(texts(claims.lang), email=claims.recipient, domain=claims.domain))


async def open_pixel(request: web.Request) -> web.StreamResponse:
    gateway, claims = _claims(request, "o")
    if claims is None:
        return _not_found()
    if request.method == "GET":
        await engagement(gateway, "open", recipient=claims.recipient, domain=claims.domain,
                         message_id=claims.message_id, useragent=request.headers.get("User-Agent", ""))
    return web.Response(body=PIXEL, content_type="image/gif",
                        headers={"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"})


async def click(request: web.Request) -> web.StreamResponse:
    gateway, claims = _claims(request, "c")
    if claims is None or not claims.link.lower().startswith(("http://", "https://")) \
            or any(c in claims.link for c in "\r\n\0"):
        return _not_found()
    if request.method == "GET":
        await engagement(gateway, "click", recipient=claims.recipient, domain=claims.domain,
                         message_id=claims.message_id, useragent=request.headers.get("User-Agent", ""), link=claims.link)
    return web.Response(status=302, headers={"Location": claims.link, "Cache-Control": "no-store",
                                             "Referrer-Policy": "no-referrer"})


def routes() -> list[Any]:
    return [
        web.get("/u/{token}", unsubscribe_get),
        web.post("/u/{token}", unsubscribe_post),
        web.get("/o/{token}.gif", open_pixel),
        web.get("/c/{token}", click),
    ]
