"""unsubscribe: one-click unsubscribe (RFC 2369 / RFC 8058) and open/click tracking (issue 6).

Per recipient, before the core's DKIM signing (which oversigns both fields), the copy gets
``List-Unsubscribe: <PUBLIC_URL/u/TOKEN>, <mailto:unsubscribe+ID@HOSTNAME?subject=unsubscribe>``
and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``; optionally a visible footer link in
the language of ``X-SES-Unsubscribe``; and, in HTML parts, an open pixel and click-tracking
links. The pages behind the links are served on the ``[http]`` listener
(:mod:`gateway.unsub_http`); the mailto address is accepted by the SMTP intake and handled by
an internal transport (:mod:`gateway.unsub_mailto`). An unsubscription goes into the
per-sender-domain list of :mod:`gateway.suppression` (the ses_policy plugin then refuses that
recipient at RCPT), sets ``UserUnsubscribed`` and emits an ``unsubscribe`` event.

Hooks:
- ``gateway_validate_config``: ``[plugins.unsubscribe]`` and ``[accounts.NAME.unsubscribe]``.
- ``gateway_startup``: registers the ``unsubscribe`` transport.
- ``gateway_rcpt`` (tryfirst): ``OK`` for a live ``unsubscribe+ID@<hostname>``, ``550 5.1.1``
  for a dead one; other recipients: no opinion.
- ``gateway_route`` (tryfirst): unsubscribe addresses go to the internal transport.
- ``gateway_message_prepare``: headers, footer, tracking (order among prepare impls does not
  matter: each one works on the copy; the core signs after all of them).
- ``gateway_http_routes``: ``/u/``, ``/o/``, ``/c/``.

Which mail gets what (per account; ``batch`` = ``X-SES-Trigger-Type`` 0 or absent):
headers for batch mail and whenever ``X-SES-Unsubscribe`` is "1".."12"; the footer when
``X-SES-Unsubscribe`` is "1".."12"; tracking for batch mail with an HTML part. The control
headers are read from ``delivery.meta`` (``trigger_type``, ``unsubscribe``, set by ses_policy),
falling back to the ``X-SES-*`` fields of the copy when that plugin did not run.

Config (``[plugins.unsubscribe]``; the plugin is inactive without ``secret``):
``secret``, ``previous_secret`` (rotation), ``token_ttl`` ("60d"), ``mailto`` (true), and the
per-account defaults ``headers`` / ``open_tracking`` / ``click_tracking`` (batch | always |
never), ``footer`` (auto | always | never), ``language`` ("2" = English), which
``[accounts.NAME.unsubscribe]`` overrides.
"""
from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any, Callable

import structlog

from gateway import Reply, Verdict, hookimpl
from gateway.transports.base import Route
from gateway.unsub_body import Changes, apply, has_html
from gateway.unsub_headers import keep_existing, set_headers
from gateway.unsub_http import routes
from gateway.unsub_i18n import texts
from gateway.unsub_mailto import ROUTE, TRANSPORT, MailtoTransport, address, match, resolve
from gateway.unsub_records import remember_mailto
from gateway.unsub_settings import LANGUAGES, Policy, Settings, current, load
from gateway.unsub_tokens import Claims, TokenCodec, mailto_id

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.delivery import Delivery
    from gateway.message import Message
    from gateway.server import Gateway
    from gateway.session import Session, Transaction

log = structlog.get_logger("gateway.unsubscribe")

UNKNOWN_ADDRESS = Reply(Verdict.DENY, 550, "5.1.1", "Unknown or expired unsubscribe address")


@hookimpl
def gateway_validate_config(config: "Config") -> list[str] | None:
    errors: list[str] = []
    load(config, errors)
    return errors or None


@hookimpl
def gateway_startup(gateway: "Gateway") -> None:
    settings = current(gateway)
    gateway.transports[TRANSPORT] = MailtoTransport(gateway)
    if settings is not None and settings.mailto:
        # unsubscribe+ID@<hostname> is mail *to* the gateway: any listener, no AUTH (RFC 8058).
        gateway.local_domains.add(gateway.config.hostname.lower())
    if settings is None:
        log.info("unsubscribe plugin inactive (no [plugins.unsubscribe] secret)")
    elif not settings.public_url.startswith("https://"):
        log.warning("http.public_url is not https: RFC 8058 one-click needs an https List-Unsubscribe URI",
                    public_url=settings.public_url)


@hookimpl(tryfirst=True)
async def gateway_rcpt(gateway: "Gateway", session: "Session", transaction: "Transaction", recipient: str) -> Reply | Verdict | None:
    settings = current(gateway)
    ident = match(recipient, gateway.config.hostname) if settings is not None else None
    if settings is None or ident is None:
        return None
    if await resolve(gateway, settings, ident) is None:
        return UNKNOWN_ADDRESS
    return Verdict.OK


@hookimpl(tryfirst=True)
def gateway_route(gateway: "Gateway", delivery: "Delivery") -> Route | None:
    if current(gateway) is not None and match(delivery.recipient, gateway.config.hostname):
        return ROUTE
    return None


@hookimpl
def gateway_http_routes(gateway: "Gateway") -> list[Any]:
    return routes()


def _control(delivery: "Delivery", message: "Message", key: str, header: str) -> str | None:
    value = delivery.meta.get(key)
    if value is None:
        value = message.get(header)
    return None if value is None else str(value).strip()


def _on(mode: str, batch: bool) -> bool:
    return mode == "always" or (mode == "batch" and batch)


@hookimpl
async def gateway_message_prepare(gateway: "Gateway", delivery: "Delivery", message: "Message") -> None:
    settings = current(gateway)
    if settings is None or delivery.account is None or not delivery.sender:
        return
    policy = settings.policy(delivery.account)
    batch = _control(delivery, message, "trigger_type", "x-ses-trigger-type") != "1"
    code = _control(delivery, message, "unsubscribe", "x-ses-unsubscribe")
    asked = code in LANGUAGES
    domain = delivery.sender.rpartition("@")[2].lower()
    lang = code if asked and code is not None else policy.language
    codec = TokenCodec(settings.secrets)
    expires = int(time.time() + settings.token_ttl)

    def url(kind: str, link: str = "") -> str:
        token = codec.encode(Claims(kind, delivery.recipient, domain, delivery.message_id, expires, lang, link))
        return f"{settings.public_url}/{kind}/{token}" + (".gif" if kind == "o" else "")

    unsub_url = url("u")
    if policy.headers == "always" or (policy.headers == "batch" and (batch or asked)):
        await _headers(gateway, settings, delivery, message, domain, unsub_url)
    changes = _body_changes(policy, settings, message, batch=batch, asked=asked, lang=lang, domain=domain,
                            unsub_url=unsub_url, url=url)
    if not changes.empty:
        apply(message, changes)


async def _headers(gateway: "Gateway", settings: Settings, delivery: "Delivery", message: "Message",
                   domain: str, unsub_url: str) -> None:
    if keep_existing(message):
        return
    if message.count("list-unsubscribe"):
        log.warning("malformed List-Unsubscribe replaced", message_id=delivery.message_id, account=delivery.account)
    mailto = None
    if settings.mailto:
        ident = mailto_id(settings.secrets[0], domain, delivery.recipient)
        await remember_mailto(gateway.store, ident, recipient=delivery.recipient, domain=domain,
                              message_id=delivery.message_id, ttl=settings.token_ttl)
        mailto = address(ident, settings.hostname)
    set_headers(message, unsub_url, mailto)


def _body_changes(policy: Policy, settings: Settings, message: "Message", *, batch: bool, asked: bool, lang: str,
                  domain: str, unsub_url: str, url: Callable[..., str]) -> Changes:
    footer = policy.footer == "always" or (policy.footer == "auto" and asked)
    html_possible = has_html(message)
    opens = html_possible and _on(policy.open_tracking, batch)
    clicks = html_possible and _on(policy.click_tracking, batch)
    if not (footer or opens or clicks):
        return Changes()
    words = texts(lang)
    lead = words.footer.format(domain=domain)
    html_footer = (f'<p style="margin:24px 0 0;font-size:12px;line-height:1.5;color:#6b7280">{html.escape(lead)} '
                   f'<a href="{html.escape(unsub_url)}" style="color:#6b7280">{html.escape(words.footer_link)}</a></p>')
    return Changes(text_footer=f"{lead}\n{unsub_url}" if footer else None,
                   html_footer=html_footer if footer else None,
                   pixel_url=url("o") if opens else None,
                   click=(lambda link: url("c", link)) if clicks else None,
                   keep_prefix=settings.public_url + "/")
