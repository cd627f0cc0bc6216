"""A recording SMTP sink (aiosmtpd) for tests: the downstream MTA the gateway delivers to.

``SinkServer`` listens on ``host:0`` and records every message with its envelope and the
peer address of the connection (for source-IP tests). Its behaviour is scriptable per
stage, like Postfix's smtp-sink ``-r/-f/-q`` options::

    sink = SinkServer(fail={"RCPT": "450 4.2.0 Mailbox busy"})
    sink = SinkServer(disconnect_after_data=True)
    sink = SinkServer(fail_data={"to@example.net": "554 5.7.1 Rejected"})
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as AioSession


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    peer: tuple[str, int]
    mail_options: list[str] = field(default_factory=list)


class _Handler:
    def __init__(self, sink: "SinkServer") -> None:
        self.sink = sink

    async def handle_MAIL(self, server: SMTP, session: AioSession, envelope: Envelope, address: str, options: list[str]) -> str:
        reply = self.sink.fail.get("MAIL")
        if reply:
            return reply
        envelope.mail_from = address       # "<>" for the null sender; aiosmtpd needs it non-empty
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: AioSession, envelope: Envelope, address: str, options: list[str]) -> str:
        reply = self.sink.fail_rcpt.get(address) or self.sink.fail.get("RCPT")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: AioSession, envelope: Envelope) -> str:
        self.sink.attempts += 1
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        if self.sink.disconnect_after_data:
            assert server.transport is not None
            server.transport.close()
            return "250 2.0.0 never seen"
        reply = self.sink.fail.get("DATA")
        for recipient in envelope.rcpt_tos:
            reply = reply or self.sink.fail_data.get(recipient)
        if reply:
            return reply
        self.sink.messages.append(Received(
            "" if envelope.mail_from == "<>" else str(envelope.mail_from), list(envelope.rcpt_tos), bytes(envelope.original_content or b""),
            tuple(session.peer) if isinstance(session.peer, tuple) else ("", 0), list(envelope.mail_options)))
        self.sink.arrived.set()
        return "250 2.0.0 Ok: queued"


class SinkServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, fail: dict[str, str] | None = None,
                 fail_rcpt: dict[str, str] | None = None, fail_data: dict[str, str] | None = None,
                 disconnect_after_data: bool = False,
                 delay: float = 0.0, tls_context: ssl.SSLContext | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.fail: dict[str, str] = dict(fail or {})
        self.fail_rcpt: dict[str, str] = dict(fail_rcpt or {})
        self.fail_data: dict[str, str] = dict(fail_data or {})   # by recipient, at end of DATA
        self.disconnect_after_data = disconnect_after_data
        self.delay = delay
        self.tls_context = tls_context
        self.auth = auth
        self.messages: list[Received] = []
        self.attempts = 0
        self.connections: list[tuple[str, int]] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None

    def _factory(self) -> SMTP:
        kwargs: dict[str, Any] = {}
        if self.auth is not None:
            user, password = self.auth

            def check(mechanism: str, login: bytes, pw: bytes) -> bool:
                return login.decode() == user and pw.decode() == password

            kwargs.update(auth_callback=check, auth_required=True, auth_require_tls=self.tls_context is not None)
        smtp = SMTP(_Handler(self), hostname="sink.test", ident="sink", tls_context=self.tls_context,
                    enable_SMTPUTF8=True, **kwargs)
        sink = self
        original = smtp.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            if peer is not None and smtp.transport is None:
                sink.connections.append(peer)
            original(transport)

        smtp.connection_made = connection_made  # type: ignore[method-assign]
        return smtp

    async def __aenter__(self) -> "SinkServer":
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages
