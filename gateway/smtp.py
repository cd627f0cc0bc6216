"""The SMTP protocol: aiosmtpd's connection and TLS plumbing with our own command layer.

This module speaks SMTP and nothing else: every decision (who may relay, limits per
account, content rules) is asked of :class:`gateway.intake.Intake`. We subclass aiosmtpd's
``SMTP`` for its STARTTLS handling (with the CVE-2024-34083 buffer fix) and its transport
plumbing, and replace the command loop, the command handlers and the DATA reader because:

- every reply must carry an RFC 3463 enhanced code from :mod:`gateway.replies`;
- DATA must end only at ``CRLF.CRLF`` (RFC 5321 §4.1.1.4), with bare LF/CR handled by policy
  (SMTP smuggling, reliability.md §2.1), a total DATA deadline (row 47), and without
  aiosmtpd's per-line list (2-3x memory per message, reliability.md §3.1);
- AUTH goes through the async ``gateway_auth`` hook and a lockout after repeated failures.
"""
from __future__ import annotations

import asyncio
import binascii
import ssl
from base64 import b64decode, b64encode
from typing import TYPE_CHECKING, Any

import structlog
from aiosmtpd.smtp import SMTP as AioSMTP

from gateway import replies
from gateway.replies import SmtpReply
from gateway.session import Session

if TYPE_CHECKING:
    from gateway.config import Limits, Listener
    from gateway.intake import Intake

log = structlog.get_logger("gateway.smtp")

# RFC 3207 §4: before STARTTLS on a listener that requires it, only these are allowed.
ALLOWED_BEFORE_STARTTLS = {"NOOP", "EHLO", "HELO", "STARTTLS", "QUIT", "RSET"}
JUNK_COMMANDS = {"NOOP", "VRFY", "EXPN", "HELP", "RSET"}
END_OF_DATA = b"\r\n.\r\n"


class GatewaySMTP(AioSMTP):
    """One SMTP connection on one listener."""

    # The StreamReader's limit: commands longer than this are discarded unread; DATA is
    # read in chunks and is not bound by it. 8 KiB also covers RFC 4954's 12 KiB AUTH
    # lines only partly: longer AUTH responses get 500 5.5.6.
    line_length_limit = 12288

    def __init__(self, intake: "Intake", listener: "Listener", limits: "Limits", *,
                 tls_context: ssl.SSLContext | None, implicit_tls: bool, hostname: str) -> None:
        self.intake = intake
        self.listener = listener
        self.limits = limits
        self.implicit_tls = implicit_tls
        self.gw: Session | None = None
        self.in_data = False
        self.closing = False
        # aiosmtpd's own __init__ runs inspect.getmembers() over the protocol on every
        # connection to build tables (AUTH mechanisms, handler hooks, commands) that this
        # subclass does not use — measured at 13% of the event loop's time under load. We
        # set exactly the state its remaining methods (connection_made/lost, STARTTLS
        # plumbing, push, timeouts) read.
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.event_handler = None
        self.data_size_limit = limits.max_message_size
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = hostname
        # STARTTLS is offered on plain listeners that have a certificate; smtps is TLS from
        # the first byte (the server wraps the socket), and AUTH is allowed there: aiosmtpd
        # #281 would otherwise refuse it because `_tls_protocol` is never set.
        self.tls_context = None if implicit_tls else tls_context
        self.require_starttls = self.tls_context is not None and listener.mode == "submission"
        self._timeout_duration = limits.idle_timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = False
        self._auth_required = False
        self._proxy_timeout = None
        self._handle_hooks = {}
        self._enforce_call_limit = False

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername") or ("", 0)
            self.gw = Session.create(str(peer[0]), int(peer[1]), self.listener)
            self.gw.tls = self.implicit_tls
            self.intake.sessions.add(self)
        elif self.gw is not None:
            self.gw.tls = True
            self.intake.end_transaction_soon(self.gw)     # RFC 3207 §4.2: start over after TLS

    def connection_lost(self, error: Exception | None) -> None:
        self.intake.sessions.discard(self)
        if self.gw is not None:
            self.intake.end_transaction_soon(self.gw)
            self.intake.closed(self.gw)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        # RFC 5321 §4.5.3.2: tell the client why before closing (reliability.md row 46).
        if self.transport is not None and not self.closing:
            self.closing = True
            self._writer.write(str(replies.S421_TIMEOUT).encode() + b"\r\n")
        super()._timeout_cb()

    async def reply(self, status: SmtpReply | str) -> None:
        await self.push(str(status))
        if isinstance(status, SmtpReply) and status.closes:
            self.close_connection()

    def close_connection(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    async def shutdown_notice(self) -> None:
        """SIGTERM: an idle session hears ``421 4.3.2`` and is closed (reliability.md §9)."""
        if not self.in_data and self.transport is not None and not self.closing:
            try:
                await self.reply(replies.S421_SHUTTING_DOWN)
            except (ConnectionError, RuntimeError):
                self.close_connection()

    async def handle_exception(self, error: Exception) -> str:
        # Our own faults never show their text to the client and never give 5xx (DESIGN §5).
        log.error("session error", session_id=self.gw.id if self.gw else None, exc_info=error)
        return str(replies.S451_LOCAL_ERROR)

    # -- the command loop ------------------------------------------------------------------------
    async def _handle_client(self) -> None:
        assert self.gw is not None
        refusal = await self.intake.connect(self.gw)
        if refusal is not None:
            await self.reply(refusal)
            self.close_connection()
            return
        await self.push(f"220 {self.hostname} ESMTP")
        unknown = 0
        junk = 0
        mails = 0
        while self.transport is not None and not self.closing:
            try:
                try:
                    line = await self._reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as error:
                    await self._discard_long_line(error.consumed)
                    await self.reply(replies.S500_LINE_TOO_LONG)
                    continue
                except asyncio.IncompleteReadError:
                    break
                line = line.rstrip(b"\r\n")
                if len(line) > self.limits.command_line_length + (36 if line[:4].upper() == b"MAIL" else 0):
                    await self.reply(replies.S500_LINE_TOO_LONG)
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode("ascii")
                except UnicodeDecodeError:
                    await self.reply(replies.S500_NON_ASCII_COMMAND)
                    continue
                arg = arg_bytes.strip().decode("utf-8", "surrogateescape") if arg_bytes.strip() else None
                method = getattr(self, f"smtp_{command}", None) if command.isalpha() else None
                if method is None or command in ("EXPN",):
                    unknown += 1
                    if unknown > self.limits.max_unknown_commands:
                        await self.reply(replies.S421_TOO_MANY_UNKNOWN)
                        break
                    await self.reply(replies.S502_NOT_IMPLEMENTED if command == "EXPN" else replies.S500_BAD_SYNTAX)
                    continue
                if command in JUNK_COMMANDS:
                    junk += 1
                    if junk > self.limits.max_junk_commands:
                        await self.reply(replies.S421_TOO_MANY_COMMANDS)
                        break
                elif command == "MAIL":
                    mails += 1
                    if mails > self.limits.max_mail_commands:
                        await self.reply(replies.S421_TOO_MANY_COMMANDS)
                        break
                if (self.require_starttls and not self._tls_protocol
                        and command not in ALLOWED_BEFORE_STARTTLS):
                    await self.reply(replies.S530_STARTTLS_FIRST)
                    continue
                self._reset_timeout()
                accepted_before = self.gw.messages
                await method(arg)
                if self.gw.messages > accepted_before:
                    junk = 0    # Postfix resets the junk count after an accepted message
            except asyncio.CancelledError:
                self._writer.close()
                raise
            except ConnectionError:
                self._writer.close()
                raise
            except Exception as error:  # noqa: BLE001 - our fault: 451, never the text
                status = await self.handle_exception(error)
                await self.push(status)

    async def _discard_long_line(self, consumed: int) -> None:
        await self._reader.read(consumed)
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as error:
                await self._reader.read(error.consumed)

    # -- greetings -------------------------------------------------------------------------------
    async def smtp_HELO(self, arg: str | None) -> None:
        if not arg:
            await self.reply(replies.S501_SYNTAX_HELO)
            return
        assert self.gw is not None and self.session is not None
        self.gw.helo, self.gw.esmtp = arg, False
        self.session.host_name, self.session.extended_smtp = arg, False
        await self.intake.end_transaction(self.gw)           # RFC 5321 §4.1.4: HELO resets
        await self.push(f"250 {self.hostname}")

    async def smtp_EHLO(self, arg: str | None) -> None:
        if not arg:
            await self.reply(replies.S501_SYNTAX_EHLO)
            return
        assert self.gw is not None and self.session is not None
        self.gw.helo, self.gw.esmtp = arg, True
        self.session.host_name, self.session.extended_smtp = arg, True
        await self.intake.end_transaction(self.gw)           # RFC 5321 §4.1.4: EHLO resets
        lines = [self.hostname, f"SIZE {self.limits.max_message_size}", "8BITMIME", "SMTPUTF8",
                 "PIPELINING", "ENHANCEDSTATUSCODES"]
        if self.tls_context is not None and not self._tls_protocol:
            lines.append("STARTTLS")
        if self.tls_active:
            lines.append("AUTH PLAIN LOGIN")
        for line in lines[:-1]:
            await self.push(f"250-{line}")
        await self.push(f"250 {lines[-1]}")

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self.reply(replies.S501_SYNTAX_PARAMS)
            return
        if self.tls_context is None or self._tls_protocol is not None:
            await self.reply(replies.S454_TLS_UNAVAILABLE if self.tls_context is None else replies.S503_BAD_SEQUENCE)
            return
        await self.reply(replies.S220_TLS_READY)
        # A handshake that never completes must not hold the connection (reliability.md row 48).
        waiter = self.loop.create_future()
        from asyncio import sslproto

        self._tls_protocol = sslproto.SSLProtocol(self.loop, self, self.tls_context, waiter, server_side=True)
        self._original_transport = self.transport
        assert self._original_transport is not None
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        try:
            async with asyncio.timeout(self.limits.tls_handshake_timeout):
                await waiter
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError):
            log.info("TLS handshake failed", session_id=self.gw.id if self.gw else None)
            self.close_connection()

    # -- AUTH (RFC 4954) ----------------------------------------------------------------------------
    async def smtp_AUTH(self, arg: str | None) -> None:
        assert self.gw is not None
        if not self.gw.esmtp:
            await self.reply(replies.S503_NEED_HELO)
            return
        if not self.tls_active:
            await self.reply(replies.S538_ENCRYPTION_REQUIRED)
            return
        if self.gw.authenticated:
            await self.reply(replies.S503_ALREADY_AUTH)
            return
        if self.gw.transaction is not None:
            await self.reply(replies.S503_BAD_SEQUENCE)      # RFC 4954 §4: not during a transaction
            return
        parts = (arg or "").split()
        if not parts or len(parts) > 2:
            await self.reply(replies.S501_SYNTAX_PARAMS)
            return
        mechanism = parts[0].upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            await self.reply(replies.S504_AUTH_MECH)
            return
        locked = self.intake.auth_locked(self.gw)
        if locked is not None:
            await self.reply(locked)
            return
        initial = parts[1].encode() if len(parts) == 2 else None
        if mechanism == "PLAIN":
            # RFC 4616: authzid NUL authcid NUL passwd
            decoded = await self._auth_value(initial, b"")
            if decoded is None:
                return
            fields = decoded.split(b"\0")
            if len(fields) != 3:
                await self.reply(replies.S501_AUTH_BASE64)
                return
            username, password = fields[1], fields[2]
        else:
            user = await self._auth_value(initial, b"Username:")
            secret = await self._auth_value(None, b"Password:") if user is not None else None
            if user is None or secret is None:
                return
            username, password = user, secret
        result = await self.intake.auth(self.gw, mechanism, username.decode("utf-8", "replace"),
                                        password.decode("utf-8", "replace"))
        await self.reply(result)

    async def _auth_value(self, initial: bytes | None, prompt: bytes) -> bytes | None:
        """The client's base64 answer (the initial response, else one asked for with 334),
        decoded; None after the refusal was already sent (bad base64, "*", too long)."""
        blob = initial if initial is not None else await self._challenge(prompt)
        if blob is None:
            return None
        try:
            return b64decode(blob.strip(), validate=True)
        except (binascii.Error, ValueError):
            await self.reply(replies.S501_AUTH_BASE64)
            return None

    async def _challenge(self, prompt: bytes) -> bytes | None:
        await self.push(b"334 " + b64encode(prompt))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as error:
            await self._discard_long_line(error.consumed)
            await self.reply(replies.S500_AUTH_LINE_TOO_LONG)
            return None
        line = line.strip()
        if line == b"*":
            await self.reply(replies.S501_SYNTAX_PARAMS.with_text("Authentication cancelled"))
            return None
        return line

    # -- the transaction ------------------------------------------------------------------------------
    async def smtp_MAIL(self, arg: str | None) -> None:
        assert self.gw is not None
        if self.gw.helo is None:
            await self.reply(replies.S503_NEED_HELO)
            return
        if self.gw.transaction is not None:
            await self.reply(replies.S503_NESTED_MAIL)
            return
        if not arg or not arg[:5].upper() == "FROM:":
            await self.reply(replies.S501_SYNTAX_MAIL)
            return
        await self.reply(await self.intake.mail(self.gw, arg[5:]))

    async def smtp_RCPT(self, arg: str | None) -> None:
        assert self.gw is not None
        if self.gw.transaction is None:
            await self.reply(replies.S503_NEED_MAIL)
            return
        if not arg or not arg[:3].upper() == "TO:":
            await self.reply(replies.S501_SYNTAX_RCPT)
            return
        await self.reply(await self.intake.rcpt(self.gw, arg[3:]))

    async def smtp_DATA(self, arg: str | None) -> None:
        assert self.gw is not None
        if self.gw.transaction is None:
            await self.reply(replies.S503_NEED_MAIL)
            return
        if not self.gw.transaction.recipients:
            await self.reply(replies.S503_NEED_RCPT)
            return
        if arg:
            await self.reply(replies.S501_SYNTAX_PARAMS)
            return
        await self.push(f"{replies.S354_DATA.code} {replies.S354_DATA.text}")
        self.in_data = True
        try:
            try:
                async with asyncio.timeout(self.limits.data_timeout):
                    raw, too_big = await self._read_data()
            except TimeoutError:
                # A client that never sends CRLF.CRLF (e.g. LF.LF, row 3) or trickles bytes (row 47).
                log.info("DATA deadline exceeded", session_id=self.gw.id)
                self.intake.stats["data_timeouts"] += 1
                await self.reply(replies.S421_TIMEOUT)
                return
            if raw is None:
                return                       # connection closed mid-DATA: nothing acknowledged
            if too_big:
                await self.intake.end_transaction(self.gw)
                await self.reply(replies.S552_TOO_BIG)
                return
            status = await self.intake.data(self.gw, raw)
            await self.reply(status)
        finally:
            self.in_data = False
            await self.intake.end_transaction(self.gw)

    async def _read_data(self) -> tuple[bytes | None, bool]:
        """Read up to CRLF.CRLF in chunks; return (dot-stuffed bytes with CRLF at the end, too big).

        The buffer starts with a virtual CRLF (the one ending the DATA command) so an empty
        message (".\\r\\n" at once) is found by the same search.
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        buf = bytearray(b"\r\n")
        dropped = 0                          # bytes thrown away once the message is too big
        scan_from = 0
        while True:
            index = buf.find(END_OF_DATA, scan_from)
            if index >= 0:
                break
            scan_from = max(len(buf) - 4, 0)
            if limit and dropped + len(buf) - 2 > limit:
                # Too big: keep reading to the end (RFC 5321 §4.2.5 replies after the data)
                # but keep only the tail needed to find the terminator.
                keep = buf[-4:]
                dropped += len(buf) - 4
                buf = bytearray(keep)
                scan_from = 0
            chunk = await reader.read(65536)
            if not chunk:
                return None, False
            self._reset_timeout()
            buf += chunk
        leftover = buf[index + 5:]
        if leftover:
            # Pipelined commands after the terminator (RFC 2920) go back to the reader.
            reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
        if dropped or (limit and index > limit + 2):
            return b"", True
        return bytes(buf[2:index + 2]), False

    async def smtp_RSET(self, arg: str | None) -> None:
        assert self.gw is not None
        if arg:
            await self.reply(replies.S501_SYNTAX_PARAMS)
            return
        await self.intake.end_transaction(self.gw)
        await self.reply(replies.S250_RESET)

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.reply(replies.S250_OK)

    async def smtp_QUIT(self, arg: str | None) -> None:
        await self.reply(replies.S221_BYE)
        self.close_connection()

    async def smtp_VRFY(self, arg: str | None) -> None:
        # RFC 5321 §3.5.3: never confirm addresses (no harvesting); 252 is the polite answer.
        await self.reply(replies.S252_CANNOT_VRFY if arg else replies.S501_SYNTAX_PARAMS)

    async def smtp_HELP(self, arg: str | None) -> None:
        await self.reply(replies.S214_HELP)

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.reply(replies.S502_NOT_IMPLEMENTED)


def protocol_factory(intake: "Intake", listener: "Listener", limits: "Limits", *,
                     tls_context: ssl.SSLContext | None, hostname: str) -> Any:
    implicit = listener.mode == "smtps"

    def factory() -> GatewaySMTP:
        return GatewaySMTP(intake, listener, limits, tls_context=tls_context, implicit_tls=implicit, hostname=hostname)

    return factory
