"""Every hook of ses-gateway, in the order a message meets them.

Rules (DESIGN §3): hooks are named ``gateway_*``, typed, and documented here; only
:mod:`gateway.dispatch` calls them. pluggy is synchronous, so an ``async def`` impl returns a
coroutine that the dispatcher awaits, with a per-impl timeout. Impls run in pluggy's call
order (later-registered first, ``tryfirst``/``trylast`` respected); built-in defaults are
``trylast``. Policy hooks return a :class:`gateway.Verdict` or :class:`gateway.Reply`
(``None`` = CONT); a policy hook that raises or times out gives ``451 4.3.0``. Notification
hooks' results are ignored; one that raises is logged and skipped.

Each docstring states how results combine with one fixed sentence:
"Stops at the first decisive verdict.", "Stops at the first result that is not None.",
"All implementations are called; results are collected." or
"All implementations are called; results are ignored."
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Union

import pluggy

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.events import Event
    from gateway.message import Message
    from gateway.results import HookResult
    from gateway.delivery import Delivery, Hold
    from gateway.server import Gateway
    from gateway.session import Session, Transaction
    from gateway.spool import QueuedMessage
    from gateway.transports.base import AttemptResult, Route

hookspec = pluggy.HookspecMarker("ses_gateway")

Maybe = Union[Any, Awaitable[Any]]

# --------------------------------------------------------------------------- lifecycle


@hookspec
def gateway_validate_config(config: "Config") -> "list[str] | None":
    """Check the plugin's part of the configuration before the gateway starts or reloads.

    :param config: the parsed, frozen configuration; read your table with
        ``config.plugin_config("name")``.
    :returns: a list of one-line error messages, or ``None`` when all is well. Any
        message stops start-up (exit 78) or makes a reload keep the old configuration.

    All implementations are called; results are collected.

    Example::

        @hookimpl
        def gateway_validate_config(config):
            if config.plugin_config("quota").get("daily", 1) < 1:
                return ["plugins.quota.daily: must be at least 1"]
    """


@hookspec
def gateway_startup(gateway: "Gateway") -> "Maybe":
    """The gateway has loaded its configuration and state store and is about to listen.

    :param gateway: the running :class:`gateway.server.Gateway` (``gateway.config``,
        ``gateway.store``, ``gateway.stash``).
    :returns: nothing; may be ``async``.

    All implementations are called; results are ignored.

    Example::

        @hookimpl
        async def gateway_startup(gateway):
            gateway.stash[CLIENT] = aiohttp.ClientSession()
    """


@hookspec
def gateway_shutdown(gateway: "Gateway") -> "Maybe":
    """The gateway has stopped listening and drained; release what startup took.

    :param gateway: the running gateway.
    :returns: nothing; may be ``async``.

    All implementations are called; results are ignored.

    Example::

        @hookimpl
        async def gateway_shutdown(gateway):
            await gateway.stash[CLIENT].close()
    """


@hookspec
def gateway_reload(gateway: "Gateway", old_config: "Config") -> "Maybe":
    """A new configuration was validated and swapped in (SIGHUP); ``gateway.config`` is the new one.

    :param gateway: the running gateway, already on the new configuration.
    :param old_config: the configuration that was replaced.
    :returns: nothing; may be ``async``. Plugins that cache settings refresh them here.

    All implementations are called; results are ignored.

    Example::

        @hookimpl
        def gateway_reload(gateway, old_config):
            gateway.stash[SCHEDULES] = build_schedules(gateway.config.plugin_config("warmup"))
    """


# --------------------------------------------------------------------------- SMTP intake


@hookspec
def gateway_connect(gateway: "Gateway", session: "Session") -> "HookResult":
    """A client connected (after the connection limits passed, before the greeting).

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param session: the new session (``peer_ip``, ``listener``, ``allowlisted``).
    :returns: a verdict; ``DENY`` → ``554 5.7.1`` and close, ``DENYSOFT`` → ``421 4.7.0``.

    Stops at the first decisive verdict.

    Example::

        @hookimpl
        def gateway_connect(session):
            if session.peer_ip in BANNED:
                return Verdict.DENYDISCONNECT
    """


@hookspec
def gateway_auth(gateway: "Gateway", session: "Session", mechanism: str, username: str, password: str) -> "str | HookResult":
    """Check AUTH credentials (RFC 4954); only ever called over TLS.

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param session: the session asking.
    :param mechanism: ``"PLAIN"`` or ``"LOGIN"``.
    :param username: the login name.
    :param password: the password; never log it.
    :returns: the account name the session then sends for, ``Verdict.DENY`` for wrong
        credentials (``535 5.7.8``), or ``None`` for no opinion.

    Stops at the first result that is not None.

    Example::

        @hookimpl
        def gateway_auth(session, mechanism, username, password):
            if ldap_check(username, password):
                return "app"
    """


@hookspec
def gateway_mail(gateway: "Gateway", session: "Session", transaction: "Transaction", sender: str) -> "HookResult":
    """MAIL FROM was received and passed the syntax checks.

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param session: the session (``account`` is set for authenticated or relay sessions).
    :param transaction: the new transaction.
    :param sender: the envelope sender, ``""`` for ``<>``.
    :returns: a verdict; ``DENY`` → ``550 5.7.1``, ``DENYSOFT`` → ``451 4.7.1``.

    Stops at the first decisive verdict.

    Example::

        @hookimpl
        def gateway_mail(session, transaction, sender):
            if sender.endswith("@spam.example"):
                return Reply(Verdict.DENY, text="FailedOperation.NotAuthenticatedSender")
    """


@hookspec
def gateway_rcpt(gateway: "Gateway", session: "Session", transaction: "Transaction", recipient: str) -> "HookResult":
    """RCPT TO was received and passed the syntax checks.

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param session: the session.
    :param transaction: the transaction (``recipients`` holds those accepted so far).
    :param recipient: the recipient address.
    :returns: a verdict; ``DENY`` → ``550 5.7.1``, ``DENYSOFT`` → ``450 4.7.1``. When every
        plugin says CONT the recipient is accepted only for sessions bound to an account
        (no open relay).

    Stops at the first decisive verdict.

    Example::

        @hookimpl
        async def gateway_rcpt(session, transaction, recipient):
            if await blocklist.contains(recipient):
                return Reply(Verdict.DENY, 550, "5.1.1", "FailedOperation.EmailAddrInBlacklist")
    """


@hookspec
def gateway_data(gateway: "Gateway", session: "Session", transaction: "Transaction", message: "Message") -> "HookResult":
    """The message arrived (end of DATA), before it is spooled; headers may be changed.

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param session: the session.
    :param transaction: the transaction with its accepted recipients.
    :param message: the message; ``message.headers`` can be read and changed.
    :returns: a verdict; ``DENY`` → ``554 5.7.1``, ``DENYSOFT`` → ``451 4.7.1``.

    Stops at the first decisive verdict.

    Example::

        @hookimpl
        def gateway_data(session, transaction, message):
            if not message.get("Subject"):
                return Reply(Verdict.DENY, 554, "5.6.0", "Subject is required")
    """


@hookspec
def gateway_queued(gateway: "Gateway", session: "Session", transaction: "Transaction", queued: "QueuedMessage") -> "Maybe":
    """The message is on stable storage and the client got ``250`` with its MessageId.

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param session: the session.
    :param transaction: the transaction.
    :param queued: the spooled message (``message_id``, ``recipients``, ``meta``).
    :returns: nothing.

    All implementations are called; results are ignored.

    Example::

        @hookimpl
        def gateway_queued(session, transaction, queued):
            log.info("queued", message_id=queued.message_id)
    """


@hookspec
def gateway_transaction_end(gateway: "Gateway", session: "Session", transaction: "Transaction", queued: bool) -> "Maybe":
    """A transaction ended: queued, or abandoned (RSET, HELO/EHLO, refused MAIL or DATA, QUIT,
    a dropped connection). Plugins that reserved something at MAIL/RCPT release it here.

    :param gateway: the running gateway.
    :param session: the session.
    :param transaction: the transaction that ended.
    :param queued: ``True`` when the message was spooled (after ``gateway_queued``).
    :returns: nothing; may be ``async``.

    All implementations are called; results are ignored.

    Example::

        @hookimpl
        async def gateway_transaction_end(gateway, session, transaction, queued):
            if not queued:
                await quota.release(session.account, len(transaction.recipients))
    """


# --------------------------------------------------------------------------- delivery


@hookspec
def gateway_delivery_gate(gateway: "Gateway", delivery: "Delivery") -> "Hold | None":
    """May this delivery be attempted now? Pacing, quotas and warm-up budgets answer here.

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param delivery: one recipient's delivery about to be attempted.
    :returns: ``None`` to go ahead, or a :class:`gateway.delivery.Hold` (``until`` as a
        UNIX time, ``reason``) to wait; a held delivery keeps DeliverStatus 8 with the reason.

    Stops at the first result that is not None.

    Example::

        @hookimpl
        async def gateway_delivery_gate(delivery):
            if not await bucket.take(delivery.account):
                return Hold(until=time.time() + 0.05, reason="send rate")
    """


@hookspec
def gateway_route(gateway: "Gateway", delivery: "Delivery") -> "Route | None":
    """Choose where a delivery goes; the built-in default follows ``[delivery] transport``.

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param delivery: the delivery (``recipient``, ``domain``, ``account``, ``meta``).
    :returns: a :class:`gateway.transports.base.Route` or ``None`` for no opinion.

    Stops at the first result that is not None.

    Example::

        @hookimpl(tryfirst=True)
        def gateway_route(delivery):
            if delivery.domain == "partner.example":
                return Route(transport="smarthost", host="10.0.0.5", port=25)
    """


@hookspec
def gateway_source_address(gateway: "Gateway", delivery: "Delivery", route: "Route") -> "str | None":
    """Choose the local IP address the outbound connection binds (warm-up pools).

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param delivery: the delivery.
    :param route: the chosen route.
    :returns: an IP address string, or ``None`` to let the system choose.

    Stops at the first result that is not None.

    Example::

        @hookimpl
        def gateway_source_address(delivery, route):
            return "192.0.2.10" if delivery.meta.get("trigger_type") == 1 else None
    """


@hookspec
def gateway_message_prepare(gateway: "Gateway", delivery: "Delivery", message: "Message") -> "Maybe":
    """Change this recipient's copy of the message before DKIM signing (always last).

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param delivery: the delivery the copy is for.
    :param message: a per-recipient copy; change headers or body in place.
    :returns: nothing; may be ``async``.

    All implementations are called; results are ignored.

    Example::

        @hookimpl
        def gateway_message_prepare(delivery, message):
            message.set("List-Unsubscribe", f"<https://gw.example/u/{token(delivery)}>")
    """


@hookspec
def gateway_delivery_result(gateway: "Gateway", delivery: "Delivery", result: "AttemptResult") -> "Maybe":
    """One delivery attempt ended: delivered, deferred or bounced.

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param delivery: the delivery (``attempts`` counts this one).
    :param result: ``status`` (delivered | deferred | bounced), ``code``, ``enhanced``,
        ``text``, ``remote_host``, ``source_address``.
    :returns: nothing; may be ``async``.

    All implementations are called; results are ignored.

    Example::

        @hookimpl
        async def gateway_delivery_result(delivery, result):
            if result.status == "bounced" and result.enhanced.startswith("5.1."):
                await blocklist.add(delivery.recipient)
    """


@hookspec
def gateway_event(gateway: "Gateway", event: "Event") -> "Maybe":
    """An SES event happened (processed, deferred, delivered, dropped, bounce, open, …).

    :param gateway: the running gateway (``config``, ``store``, ``stash``).
    :param event: the :class:`gateway.events.Event` (SES name, recipient, MessageId, …),
        already recorded in the state store's outbox.
    :returns: nothing; may be ``async``.

    All implementations are called; results are ignored.

    Example::

        @hookimpl
        def gateway_event(event):
            if event.event == "bounce":
                metrics.bounces.inc()
    """


# --------------------------------------------------------------------------- HTTP


@hookspec
def gateway_metrics(gateway: "Gateway") -> "list[Any] | None":
    """Contribute Prometheus metric families to ``/metrics``, computed at scrape time.

    :param gateway: the running gateway.
    :returns: a list of ``prometheus_client.core`` metric families (``GaugeMetricFamily`` …)
        or ``None``; may be ``async``.

    All implementations are called; results are collected.

    Example::

        @hookimpl
        async def gateway_metrics(gateway):
            depth = GaugeMetricFamily("sesgw_webhook_outbox_depth", "Events waiting to be posted")
            depth.add_metric([], len(await gateway.store.outbox(state="pending", limit=100000)))
            return [depth]
    """


@hookspec
def gateway_http_routes(gateway: "Gateway") -> "list[Any] | None":
    """Add routes to the HTTP listener (``[http]``).

    :param gateway: the running gateway.
    :returns: a list of ``aiohttp.web.RouteDef`` (``web.get(path, handler)``) or ``None``.

    All implementations are called; results are collected.

    Example::

        @hookimpl
        def gateway_http_routes(gateway):
            return [web.get("/hello", lambda request: web.Response(text="hi"))]
    """
