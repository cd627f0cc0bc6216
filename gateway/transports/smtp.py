"""The SMTP transport: one recipient, one attempt, over a pooled connection.

Direct (``route.hosts is None``: the MX hosts of the destination) or via a smarthost. The
outcome of each stage follows RFC 5321 and reliability.md §1.9:

* connect failure, timeout, 4xx (or 5xx) greeting, EHLO or MAIL 4xx, TLS policy failure →
  try the next address / MX host (RFC 5321 §5.1), deferred when none is left;
* MAIL/RCPT/DATA 5xx → bounced; RCPT/DATA 4xx → deferred;
* no reply after the final "." → deferred: ambiguous, a retry may duplicate
  (RFC 5321 §4.5.3.2.6; accepted, never lost).

TLS per ``Route.tls`` (reliability.md §4.1): ``opportunistic`` (RFC 7435, unverified,
plaintext when the handshake fails), ``starttls`` (required, RFC 3207), ``tls`` (implicit,
RFC 8314), ``none``. Credentials are sent only over TLS and never logged.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ssl
from dataclasses import dataclass

import aiosmtplib
import structlog

from gateway.config import Delivery
from gateway.transports.base import AttemptResult, Route
from gateway.transports.mx import MxError, MxResolver
from gateway.transports.pool import ConnectionPool, PoolClosed, PooledConnection, PoolKey

log = structlog.get_logger("gateway.transports")

# aiosmtplib raises these for socket-level trouble; TimeoutError comes from our own deadlines.
_NETWORK_ERRORS = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPConnectError,
                   OSError, TimeoutError)


class _HostFailure(Exception):
    """This host cannot take the message now: try the next one (RFC 5321 §5.1).

    ``network``: the connection broke before any reply said anything about the message.
    """

    def __init__(self, result: AttemptResult, *, network: bool = False) -> None:
        super().__init__(result.describe())
        self.result = result
        self.network = network


class _TlsFailure(Exception):
    """The TLS handshake failed (opportunistic mode falls back to plaintext)."""


@dataclass(frozen=True)
class _Envelope:
    sender: str
    recipient: str
    data: bytes
    utf8: bool
    body_8bit: bool


def _skip_host(code: int, text: str, host: str) -> _HostFailure:
    """A refusal at greeting/EHLO/MAIL-4xx level: this host, not the message, is the problem.

    A 5xx greeting is skipped like a 4xx one (Postfix ``smtp_skip_5xx_greeting``): another MX
    or a later retry may accept; the lifetime limit bounces in the end.
    """
    result = AttemptResult.from_reply(code, text, remote_host=host)
    if result.status == "bounced":
        result = dataclasses.replace(result, status="deferred")
    return _HostFailure(result)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return str(exc) or type(exc).__name__


def _unverified_context() -> ssl.SSLContext:
    # Opportunistic TLS (RFC 7435): encryption without authentication beats plaintext.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class SmtpTransport:
    def __init__(self, delivery: Delivery, hostname: str) -> None:
        self.delivery = delivery
        self.hostname = hostname
        self.resolver = MxResolver(delivery.dns_nameservers, delivery.dns_timeout, delivery.allow_local_mx)
        self.pool = ConnectionPool(
            max_connections=delivery.max_connections, per_destination=delivery.concurrency_per_destination,
            idle=delivery.connection_idle, messages_per_connection=delivery.messages_per_connection,
            command_timeout=delivery.command_timeout)
        self._verified: ssl.SSLContext | None = None
        self._unverified: ssl.SSLContext | None = None

    async def close(self) -> None:
        await self.pool.close()

    async def send(self, route: Route, *, source_address: str | None, sender: str, recipient: str,
                   data: bytes, smtputf8: bool, body_8bit: bool) -> AttemptResult:
        source = source_address or self.delivery.source_address
        # A non-ASCII address needs SMTPUTF8 whatever the flag says (RFC 6531 §3.4).
        envelope = _Envelope(sender, recipient, data, smtputf8 or not (sender + recipient).isascii(), body_8bit)
        try:
            async with self.pool.slot(route.destination):
                result = await self._deliver(route, source, envelope)
        except PoolClosed:
            result = AttemptResult.deferred("4.3.2", "shutting down")
        except Exception:
            # A bug here must not lose mail: the message stays queued and is retried.
            log.exception("smtp transport error", destination=route.destination, recipient=recipient)
            result = AttemptResult.deferred("4.3.0", "internal error in the SMTP transport")
        log.info("smtp attempt", destination=route.destination, recipient=recipient, status=result.status,
                 code=result.code, enhanced=result.enhanced, remote=result.remote_host, source=source)
        return dataclasses.replace(result, source_address=source or "")

    async def _deliver(self, route: Route, source: str | None, envelope: _Envelope) -> AttemptResult:
        if route.hosts is None:
            try:
                targets = await self.resolver.resolve(route.destination)
            except MxError as exc:
                return exc.result
        else:
            # A smarthost is connected to by name: TLS verification needs the name.
            targets = [(host, [host]) for host in route.hosts]
        last = AttemptResult.deferred("4.4.4", f"no host to deliver to for {route.destination}")
        for name, addresses in targets:
            for address in addresses:
                try:
                    return await self._attempt(route, name, address, source, envelope)
                except _HostFailure as failure:
                    last = failure.result
                    log.info("smtp host failed", destination=route.destination, host=name, address=address,
                             reply=last.describe())
        return last

    # -- one host ------------------------------------------------------------------------------
    async def _attempt(self, route: Route, name: str, address: str, source: str | None,
                       envelope: _Envelope) -> AttemptResult:
        key = PoolKey(address, route.port, source, route.tls, route.verify, route.username)
        retried = False
        while True:
            conn, reused = await self.pool.acquire(
                key, lambda: self._open(route, name, address, source), remote_host=name)
            reusable = False
            try:
                result, reusable = await self._transaction(conn, envelope)
                return result
            except _HostFailure as failure:
                # A pooled connection the server dropped while idle (a race RSET cannot
                # close): that says nothing about the host, so once more on a fresh one.
                if not (failure.network and reused) or retried:
                    raise
                retried = True
            finally:
                await self.pool.release(conn, reusable=reusable)

    async def _open(self, route: Route, name: str, address: str, source: str | None) -> aiosmtplib.SMTP:
        """Connect, EHLO, TLS, AUTH, all within one deadline; raises :class:`_HostFailure`."""
        d = self.delivery
        deadline = d.connect_timeout + 5 * d.command_timeout   # banner, EHLO, STARTTLS, EHLO, AUTH
        try:
            async with asyncio.timeout(deadline):
                try:
                    return await self._establish(route, name, address, source, plaintext=False)
                except _TlsFailure as exc:
                    if route.tls != "opportunistic":
                        # RFC 3463 X.7.5 cryptographic failure; retried (RFC 8461 §5.1 spirit).
                        raise _HostFailure(AttemptResult.deferred("4.7.5", f"TLS failed: {exc}", remote_host=name)) from None
                    # Postfix "may": a broken handshake means plaintext on a new connection.
                    log.info("starttls failed, using plaintext", host=name, address=address, error=str(exc))
                    return await self._establish(route, name, address, source, plaintext=True)
        except _HostFailure:
            raise
        except aiosmtplib.SMTPResponseException as exc:
            raise _skip_host(exc.code, exc.message, name) from None
        except _NETWORK_ERRORS as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                # Implicit TLS (RFC 8314) handshake or certificate failure.
                raise _HostFailure(AttemptResult.deferred("4.7.5", f"TLS failed: {_describe(exc.__cause__)}",
                                                          remote_host=name)) from None
            raise _HostFailure(AttemptResult.deferred("4.4.1", f"connection to {name} failed: {_describe(exc)}",
                                                      remote_host=name)) from None

    async def _establish(self, route: Route, name: str, address: str, source: str | None, *,
                         plaintext: bool) -> aiosmtplib.SMTP:
        d = self.delivery
        implicit = route.tls == "tls"
        smtp = aiosmtplib.SMTP(hostname=address, port=route.port, local_hostname=self.hostname,
                               source_address=(source, 0) if source else None, timeout=d.command_timeout,
                               use_tls=implicit, start_tls=False,
                               tls_context=self._context(route.verify) if implicit else None)
        try:
            await smtp.connect(timeout=d.connect_timeout)
            await self._hello(smtp)
            if route.tls in ("opportunistic", "starttls") and not plaintext:
                await self._starttls(smtp, route, name)
            if route.username is not None:
                await self._login(smtp, route, name)
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def _hello(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo(timeout=self.delivery.command_timeout)
        except aiosmtplib.SMTPHeloError as exc:
            # RFC 5321 §3.2: a server that rejects EHLO with 5xx may still speak HELO.
            if exc.code < 500 or not smtp.is_connected:
                raise
            await smtp.helo(timeout=self.delivery.command_timeout)

    async def _starttls(self, smtp: aiosmtplib.SMTP, route: Route, name: str) -> None:
        if not smtp.supports_extension("starttls"):
            if route.tls == "starttls":
                raise _HostFailure(AttemptResult.deferred("4.7.4", "TLS not available", remote_host=name))
            return
        verify = route.verify and route.tls == "starttls"
        try:
            await smtp.starttls(server_hostname=name, tls_context=self._context(verify),
                                timeout=self.delivery.command_timeout)
        except aiosmtplib.SMTPResponseException as exc:
            if route.tls == "starttls":
                raise _HostFailure(AttemptResult.deferred("4.7.4", f"TLS not available: {exc.code} {exc.message}",
                                                          remote_host=name)) from None
            return   # refused before the handshake: the session is still plaintext and usable
        except (ssl.SSLError, aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
            raise _TlsFailure(_describe(exc)) from None
        # RFC 3207 §4.2: forget what was learnt before TLS and ask again.
        await self._hello(smtp)

    async def _login(self, smtp: aiosmtplib.SMTP, route: Route, name: str) -> None:
        if smtp.get_transport_info("sslcontext") is None:
            # Never send credentials in clear text (reliability.md §4.1, smarthost row).
            raise _HostFailure(AttemptResult.deferred("4.7.4", "refusing AUTH without TLS", remote_host=name))
        password = route.password.value if route.password is not None else ""
        try:
            await smtp.login(route.username or "", password, timeout=self.delivery.command_timeout)
        except aiosmtplib.SMTPResponseException as exc:
            # 535 and friends: defer and alert; an operator fixes credentials, mail waits
            # (reliability.md §1.9). The reply text is the server's, never our secret.
            log.warning("smtp authentication failed", host=name, code=exc.code)
            raise _HostFailure(AttemptResult("deferred", exc.code, "4.7.8",
                                             f"authentication failed: {exc.message}", name)) from None
        except aiosmtplib.SMTPException as exc:
            raise _HostFailure(AttemptResult.deferred("4.7.4", f"authentication not possible: {exc}",
                                                      remote_host=name)) from None

    def _context(self, verify: bool) -> ssl.SSLContext:
        # Built once: loading the CA bundle is not free.
        if verify:
            if self._verified is None:
                self._verified = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            return self._verified
        if self._unverified is None:
            self._unverified = _unverified_context()
        return self._unverified

    # -- one transaction -----------------------------------------------------------------------
    async def _transaction(self, conn: PooledConnection, envelope: _Envelope) -> tuple[AttemptResult, bool]:
        """MAIL, RCPT, DATA on ``conn``: (result, connection reusable). Raises :class:`_HostFailure`."""
        host = conn.remote_host
        # No downgrade (reliability.md §2.6, §8 rows 25-26): RFC 6531 §3.4, RFC 6152.
        if envelope.utf8 and not conn.supports("smtputf8"):
            return AttemptResult.bounced("5.6.7", f"{host} does not support SMTPUTF8", remote_host=host), True
        if envelope.body_8bit and not conn.supports("8bitmime"):
            return AttemptResult.bounced("5.6.3", f"{host} does not support 8BITMIME", remote_host=host), True
        options = []
        if envelope.body_8bit:
            options.append(b"BODY=8BITMIME")
        if envelope.utf8:
            options.append(b"SMTPUTF8")
        if conn.supports("size"):
            options.append(b"SIZE=%d" % len(envelope.data))   # RFC 1870: refused early if too big
        try:
            sender = b"<" + envelope.sender.encode() + b">"
            recipient = b"<" + envelope.recipient.encode() + b">"
        except UnicodeEncodeError:
            return AttemptResult.bounced("5.1.3", "address is not valid UTF-8", remote_host=host), True

        d = self.delivery
        smtp = conn.smtp
        stage = "MAIL"
        data_sent = False
        try:
            # aiosmtplib's timeouts are per socket operation; this bounds the whole transaction.
            async with asyncio.timeout(2 * d.command_timeout + d.data_timeout + d.command_timeout):
                reply = await smtp.execute_command(b"MAIL", b"FROM:" + sender, *options, timeout=d.command_timeout)
                if reply.code != 250:
                    if reply.code < 500:
                        raise _skip_host(reply.code, reply.message, host)
                    return AttemptResult.from_reply(reply.code, reply.message, remote_host=host), True
                stage = "RCPT"
                reply = await smtp.execute_command(b"RCPT", b"TO:" + recipient, timeout=d.command_timeout)
                if reply.code not in (250, 251):
                    return AttemptResult.from_reply(reply.code, reply.message, remote_host=host), True
                stage = "DATA"
                data_sent = True
                reply = await smtp.data(envelope.data, timeout=d.data_timeout)
                return AttemptResult.from_reply(reply.code, reply.message, remote_host=host), True
        except aiosmtplib.SMTPResponseException as exc:
            # DATA refused (354 not given, or the final reply not 250): 4xx deferred, 5xx bounced.
            return AttemptResult.from_reply(exc.code, exc.message, remote_host=host), True
        except ValueError:
            # aiosmtplib refuses control characters in command arguments (command injection).
            return AttemptResult.bounced("5.1.3", "address contains control characters", remote_host=host), False
        except _NETWORK_ERRORS as exc:
            result = AttemptResult.deferred("4.4.2", f"connection lost during {stage}: {_describe(exc)}", remote_host=host)
            if data_sent:
                # No reply after the message was (maybe) sent: ambiguous, retry later
                # (RFC 5321 §4.5.3.2.6); never try another MX now.
                return result, False
            raise _HostFailure(result, network=stage == "MAIL") from None
