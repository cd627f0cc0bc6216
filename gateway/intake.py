"""Intake: what the SMTP protocol asks, answered with the core's rules and the plugins' verdicts.

:mod:`gateway.smtp` speaks the protocol; this module decides. It holds the rules that are
the core's and cannot be switched off by a plugin: connection limits, the open-relay guard
(DESIGN §5: relaying only for sessions bound to an account), address syntax, ESMTP
parameters, AUTH lockout, content cleanup, and the durable commit before ``250``.
"""
from __future__ import annotations

import asyncio
import collections
import email.utils
import re
import time
from typing import TYPE_CHECKING, Any

import structlog

from gateway import replies
from gateway.addresses import Parsed, Policy, parse_path
from gateway.cleanup import CleanupPolicy, clean
from gateway.replies import SmtpReply, for_verdict
from gateway.results import Reply, Verdict
from gateway.session import Session, StashKey
from gateway.spool import QueuedMessage, RecipientState, SpoolError, new_message_id

if TYPE_CHECKING:
    from gateway.server import Gateway
    from gateway.smtp import GatewaySMTP

log = structlog.get_logger("gateway.intake")

# The configuration a session started with: a reload (SIGHUP) applies to new sessions, a
# running one finishes on the configuration it was greeted under.
SESSION_CONFIG = StashKey[Any]()
# Tencent SES error codes lead plugin reply texts: "FailedOperation.EmailAddrInBlacklist ...".
_SES_CODE = re.compile(r"[A-Z][A-Za-z]+(?:\.[A-Za-z]+)+(?=\s|$)")


class Intake:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.sessions: set["GatewaySMTP"] = set()
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.auth_failures: dict[str, collections.deque[float]] = {}
        self.auth_locked_until: dict[str, float] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self._ending: set[asyncio.Task[None]] = set()
        # RCPT outcomes by reply (code, enhanced code, SES error code or ""), for /metrics.
        self.rcpt_results: collections.Counter[tuple[int, str, str]] = collections.Counter()

    @property
    def config(self) -> Any:
        return self.gateway.config

    def config_of(self, session: Session) -> Any:
        return session.stash.get(SESSION_CONFIG, self.gateway.config)

    # -- connection -------------------------------------------------------------------------------
    async def connect(self, session: Session) -> SmtpReply | None:
        session.stash[SESSION_CONFIG] = self.gateway.config
        limits = self.config.limits
        self.per_ip[session.peer_ip] += 1
        if self.gateway.stopping:
            return replies.S421_SHUTTING_DOWN
        # Connection caps in the protocol factory: aiosmtpd has none (#282, reliability.md row 44-45).
        if len(self.sessions) > limits.max_connections:
            return replies.S421_SYSTEM_BUSY
        if self.per_ip[session.peer_ip] > limits.max_connections_per_ip:
            return replies.S421_TOO_MANY_CONN_IP
        listener = session.listener
        session.allowlisted = listener.allows(session.peer_ip)
        if listener.mode == "relay" and session.allowlisted and listener.account:
            session.account = listener.account
        reply = await self.gateway.dispatch.verdict("gateway_connect", session=session)
        if reply.verdict in (Verdict.CONT, Verdict.OK):
            return None
        result = for_verdict("connect", reply)
        return result if result.code == 421 or result.code >= 500 else replies.S421_DISCONNECT

    async def end_transaction(self, session: Session, *, queued: bool = False) -> None:
        """Close the open transaction, if any, and tell ``gateway_transaction_end`` plugins."""
        transaction = session.transaction
        if transaction is None:
            return
        session.reset()
        await self.gateway.dispatch.notify("gateway_transaction_end", session=session, transaction=transaction,
                                           queued=queued)

    def end_transaction_soon(self, session: Session) -> None:
        """The same from synchronous code (a dropped connection): runs as a task."""
        if session.transaction is not None:
            task = asyncio.get_running_loop().create_task(self.end_transaction(session))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    def closed(self, session: Session) -> None:
        self.per_ip[session.peer_ip] -= 1
        if self.per_ip[session.peer_ip] <= 0:
            del self.per_ip[session.peer_ip]

    # -- AUTH -----------------------------------------------------------------------------------------
    def auth_locked(self, session: Session) -> SmtpReply | None:
        until = self.auth_locked_until.get(session.peer_ip)
        if until is None:
            return None
        if until > time.monotonic():
            return replies.S454_AUTH_LOCKED
        del self.auth_locked_until[session.peer_ip]
        return None

    async def auth(self, session: Session, mechanism: str, username: str, password: str) -> SmtpReply:
        try:
            result = await self.gateway.dispatch.first(
                "gateway_auth", session=session, mechanism=mechanism, username=username, password=password)
        except Exception:
            return replies.S454_AUTH_LOCKED
        if isinstance(result, str) and result in self.config_of(session).accounts:
            session.authenticated, session.username, session.account = True, username, result
            self.auth_failures.pop(session.peer_ip, None)
            log.info("auth ok", session_id=session.id, username=username, account=result)
            return replies.S235_AUTH_OK
        # Brute force: N failures per IP within the window lock the IP out (reliability.md §2.7).
        limits = self.config_of(session).limits
        now = time.monotonic()
        failures = self.auth_failures.setdefault(session.peer_ip, collections.deque())
        failures.append(now)
        while failures and failures[0] < now - limits.auth_failure_window:
            failures.popleft()
        log.warning("auth failed", session_id=session.id, peer=session.peer_ip, username=username, failures=len(failures))
        if len(failures) >= limits.auth_max_failures:
            self.auth_locked_until[session.peer_ip] = now + limits.auth_lockout
            failures.clear()
            return replies.S421_TOO_MANY_COMMANDS.with_text("Too many authentication failures, closing connection")
        return replies.S535_AUTH_INVALID

    # -- MAIL / RCPT -----------------------------------------------------------------------------------
    def _address_policy(self, session: Session, smtputf8: bool) -> Policy:
        limits = self.config_of(session).limits
        return Policy(smtputf8, limits.allow_address_literals, limits.allow_quoted_local_parts)

    async def mail(self, session: Session, arg: str) -> SmtpReply:
        # Refusals of the sender are answered here, at MAIL — unless the gateway receives mail
        # for local domains (the one-click unsubscribe mailto address, RFC 8058), which must
        # work without AUTH: then the refusal is kept and given to every RCPT outside them.
        local_domains = self.gateway.local_domains
        refusal: SmtpReply | None = None
        if session.account is None and (session.listener.require_auth or not session.allowlisted):
            refusal = replies.S530_AUTH_REQUIRED
            if not local_domains:
                return refusal
        parsed = parse_path(arg, self._address_policy(session, True), null_ok=True)
        if isinstance(parsed, SmtpReply):
            return parsed
        params = _esmtp_params(parsed.params)
        if params is None:
            return replies.S501_SYNTAX_PARAMS
        smtputf8 = params.pop("SMTPUTF8", None)
        if smtputf8 not in (None, True):
            return replies.S501_SYNTAX_PARAMS
        if not parsed.address.isascii() and not smtputf8:
            return replies.S553_SMTPUTF8_REQUIRED
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            return replies.S501_SYNTAX_PARAMS
        size = params.pop("SIZE", None)
        if size is not None:
            if size is True or not str(size).isdigit():
                return replies.S501_SYNTAX_PARAMS
            if int(str(size)) > self.config_of(session).limits.max_message_size:
                return replies.S552_TOO_BIG
        if params:
            return replies.S555_PARAM_UNKNOWN
        # An account sends only from its own domains, and only from domains it can sign for
        # (DESIGN §4-5); the null sender (DSNs) has no domain to check.
        if parsed.address and session.account is not None and not self.may_send_as(session.account, parsed.domain, session):
            if not local_domains:
                return replies.S550_NOT_AUTHENTICATED_SENDER
            refusal = refusal or replies.S550_NOT_AUTHENTICATED_SENDER
        if not self.gateway.spool.has_space():
            return replies.S452_STORAGE
        transaction = session.begin(parsed.address)
        transaction.smtputf8 = bool(smtputf8)
        transaction.body_8bit = body == "8BITMIME"
        transaction.refusal = refusal
        reply = await self.gateway.dispatch.verdict("gateway_mail", session=session, transaction=transaction,
                                                    sender=parsed.address)
        if reply.verdict not in (Verdict.CONT, Verdict.OK):
            await self.end_transaction(session)
            return for_verdict("mail", reply)
        return replies.S250_SENDER_OK

    async def rcpt(self, session: Session, arg: str) -> SmtpReply:
        reply = await self._rcpt(session, arg)
        match = _SES_CODE.match(reply.text) if reply.code >= 400 else None
        self.rcpt_results[(reply.code, reply.enhanced, match.group(0) if match else "")] += 1
        return reply

    async def _rcpt(self, session: Session, arg: str) -> SmtpReply:
        transaction = session.transaction
        assert transaction is not None
        parsed = parse_path(arg, self._address_policy(session, transaction.smtputf8), null_ok=False)
        if isinstance(parsed, SmtpReply):
            return parsed
        if parsed.params:
            params = _esmtp_params(parsed.params)
            return replies.S501_SYNTAX_PARAMS if params is None else replies.S555_PARAM_UNKNOWN
        if transaction.refusal is not None and parsed.domain not in self.gateway.local_domains:
            return transaction.refusal
        if parsed.source_route:
            log.info("source route stripped", session_id=session.id, recipient=parsed.address)
        if len(transaction.recipients) >= self.config_of(session).limits.max_recipients:
            return replies.S452_TOO_MANY_RCPTS
        reply = await self.gateway.dispatch.verdict("gateway_rcpt", session=session, transaction=transaction,
                                                    recipient=parsed.address)
        if reply.verdict is Verdict.CONT:
            # Fail closed: no plugin vouched for it, so only an account's session relays.
            if session.account is None:
                return replies.S554_RELAY_DENIED
        elif reply.verdict is not Verdict.OK:
            return for_verdict("rcpt", reply)
        transaction.recipients.append(parsed.address)
        return replies.S250_RCPT_OK

    def may_send_as(self, account_name: str, domain: str, session: Session | None = None) -> bool:
        account = (self.config_of(session) if session is not None else self.config).accounts.get(account_name)
        domain = domain.lower()
        signer = self.gateway.signer
        return bool(account is not None and account.owns(domain) and signer is not None and signer.can_sign(domain))

    # -- DATA ------------------------------------------------------------------------------------------
    def cleanup_policy(self, session: Session) -> CleanupPolicy:
        config = self.config_of(session)
        limits = config.limits
        return CleanupPolicy(config.hostname, session.listener.bare_lf, limits.text_line_length,
                             limits.max_header_size, limits.max_received_headers)

    async def data(self, session: Session, raw: bytes) -> SmtpReply:
        transaction = session.transaction
        assert transaction is not None
        message = clean(raw, self.cleanup_policy(session), message_id_domain=self.config.hostname)
        if isinstance(message, SmtpReply):
            self._log_transaction(session, message)
            return message
        if session.account is not None and transaction.refusal is None:
            # (With a kept refusal every accepted recipient is local: no From to authorise.)
            # The header From is what recipients see and what DKIM aligns with (RFC 7489 §3.1).
            for _, address in email.utils.getaddresses(message.get_all("from")):
                if not self.may_send_as(session.account, address.rpartition("@")[2], session):
                    self._log_transaction(session, replies.S550_NOT_AUTHENTICATED_SENDER)
                    return replies.S550_NOT_AUTHENTICATED_SENDER
        if not transaction.body_8bit and not raw.isascii():
            transaction.body_8bit = True       # many clients send 8-bit without BODY=8BITMIME
        reply = await self.gateway.dispatch.verdict("gateway_data", session=session, transaction=transaction,
                                                    message=message)
        if reply.verdict not in (Verdict.CONT, Verdict.OK):
            result = for_verdict("data", reply)
            self._log_transaction(session, result)
            return result
        data = message.as_bytes()
        meta = dict(transaction.meta)
        meta.update(smtputf8=transaction.smtputf8, body_8bit=transaction.body_8bit,
                    peer=session.peer_ip, session=session.id)
        queued = QueuedMessage(
            message_id=new_message_id(self.config.node_id), account=session.account, sender=transaction.sender,
            recipients=[RecipientState(r) for r in transaction.recipients], received=time.time(), meta=meta,
        )
        try:
            await self.gateway.spool.commit(queued, data)
        except SpoolError:
            self._log_transaction(session, replies.S451_QUEUE_WRITE)
            return replies.S451_QUEUE_WRITE
        session.messages += 1
        result = replies.S250_QUEUED.with_text(f"Ok {queued.message_id}")
        self._log_transaction(session, result, queued)
        await self.gateway.scheduler.accept(queued, data, message)
        await self.gateway.dispatch.notify("gateway_queued", session=session, transaction=transaction, queued=queued)
        await self.end_transaction(session, queued=True)
        return result

    def _log_transaction(self, session: Session, reply: SmtpReply, queued: QueuedMessage | None = None) -> None:
        transaction = session.transaction
        self.stats[f"transactions_{reply.code // 100}xx"] += 1
        log.info("transaction", session_id=session.id, peer=session.peer_ip, account=session.account,
                 sender=transaction.sender if transaction else None,
                 recipients=len(transaction.recipients) if transaction else 0,
                 message_id=queued.message_id if queued else None, result=f"{reply.code} {reply.enhanced}",
                 size=queued.size if queued else None)


def _esmtp_params(text: str) -> dict[str, str | bool] | None:
    """RFC 5321 §4.1.2 esmtp-param = keyword ["=" value]; keywords are case-insensitive."""
    params: dict[str, str | bool] = {}
    for item in text.split():
        keyword, eq, value = item.partition("=")
        if not keyword.replace("-", "").isalnum() or (eq and not value) or keyword.upper() in params:
            return None
        params[keyword.upper()] = value.upper() if keyword.upper() in ("BODY",) else (value if eq else True)
    return params


__all__ = ["Intake", "Parsed", "Reply"]
