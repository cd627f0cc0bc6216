"""SmtpTransport against real SMTP servers on loopback: the aiosmtpd sink, a hand-written
scripted server (for greetings and EHLO keywords aiosmtpd cannot be made to give) and the
local DNS server for MX routing."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import Delivery, Secret, parse
from gateway.testing.dns import DnsServer
from gateway.testing.sink import SinkServer
from gateway.transports.base import AttemptResult, Route
from gateway.transports.smtp import SmtpTransport

MESSAGE = (b"From: App <app@example.com>\r\nTo: to@example.net\r\nSubject: hello\r\n"
           b"Message-ID: <m1@example.com>\r\n\r\nHello world\r\n.leading dot\r\n")

CONFIG = """
[server]
hostname = "gw.example.com"
spool_dir = "/nonexistent/spool"
state = "sqlite:///nonexistent/state.db"
[[listener]]
address = "127.0.0.1:0"
mode = "relay"
networks = ["127.0.0.0/8"]
[delivery]
transport = "mx"
connect_timeout = "1s"
command_timeout = "2s"
data_timeout = "2s"
connection_idle = "10s"
dns_timeout = "500ms"
allow_local_mx = true
"""


def delivery(**overrides: object) -> Delivery:
    return dataclasses.replace(parse(CONFIG, env={}).delivery, **overrides)  # type: ignore[arg-type]


def smarthost(port: int, host: str = "127.0.0.1", **kw: object) -> Route:
    return Route(transport="smtp", destination=f"{host}:{port}", hosts=(host,), port=port,
                 **{"tls": "none", **kw})  # type: ignore[arg-type]


async def send(transport: SmtpTransport, route: Route, *, recipient: str = "to@example.net",
               data: bytes = MESSAGE, source: str | None = None, utf8: bool = False,
               body_8bit: bool = False, sender: str = "app@example.com") -> AttemptResult:
    return await transport.send(route, source_address=source, sender=sender, recipient=recipient,
                                data=data, smtputf8=utf8, body_8bit=body_8bit)


@pytest.fixture
async def transport():
    instance = SmtpTransport(delivery(), "gw.example.com")
    yield instance
    await instance.close()


class ScriptedServer:
    """A minimal SMTP server written by hand: exact control of the greeting and EHLO keywords."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, greeting: str = "220 scripted ESMTP",
                 extensions: tuple[str, ...] = ("PIPELINING",)) -> None:
        self.host, self.port = host, port
        self.greeting, self.extensions = greeting, extensions
        self.commands: list[bytes] = []
        self.messages: list[bytes] = []
        self._server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def reply(text: str) -> None:
            writer.write(text.encode() + b"\r\n")

        try:
            reply(self.greeting)
            while not self.greeting.startswith(("4", "5")):
                line = await reader.readline()
                if not line:
                    break
                self.commands.append(line.rstrip(b"\r\n"))
                verb = line[:4].upper()
                if verb == b"EHLO":
                    reply("\r\n".join(f"250-{x}" for x in ("scripted.test", *self.extensions[:-1]))
                          + f"\r\n250 {self.extensions[-1]}" if self.extensions else "250 scripted.test")
                elif verb == b"DATA":
                    reply("354 go ahead")
                    await writer.drain()
                    body = b""
                    while not body.endswith(b"\r\n.\r\n"):
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        body += chunk
                    self.messages.append(body)
                    reply("250 2.0.0 queued")
                elif verb == b"QUIT":
                    reply("221 bye")
                    break
                else:
                    reply("250 OK")
                await writer.drain()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> "ScriptedServer":
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the sink (what many real MX hosts present)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("sink.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


# -- smarthost delivery and the pool -------------------------------------------------------------

async def test_smarthost_delivery_is_byte_correct(transport, sink):
    result = await send(transport, smarthost(sink.port))
    assert (result.status, result.code, result.remote_host) == ("delivered", 250, "127.0.0.1")
    [received] = sink.messages
    assert received.data == MESSAGE
    assert (received.sender, received.recipients) == ("app@example.com", ["to@example.net"])


async def test_connections_are_reused(transport, sink):
    for number in range(3):
        result = await send(transport, smarthost(sink.port), recipient=f"r{number}@example.net")
        assert result.status == "delivered"
    assert len(sink.messages) == 3
    assert len(sink.connections) == 1


async def test_messages_per_connection_and_idle_limits(sink):
    transport = SmtpTransport(delivery(messages_per_connection=2, connection_idle=0.2), "gw.example.com")
    try:
        for _ in range(3):
            assert (await send(transport, smarthost(sink.port))).status == "delivered"
        assert len(sink.connections) == 2          # the third message needed a new connection
        await asyncio.sleep(0.4)                   # the idle connection was closed meanwhile
        assert transport.pool.open == 0
        assert (await send(transport, smarthost(sink.port))).status == "delivered"
        assert len(sink.connections) == 3
    finally:
        await transport.close()


async def test_concurrency_per_destination(sink):
    sink.delay = 0.2
    transport = SmtpTransport(delivery(concurrency_per_destination=2), "gw.example.com")
    try:
        results = await asyncio.gather(*(send(transport, smarthost(sink.port)) for _ in range(5)))
        assert {r.status for r in results} == {"delivered"}
        assert len(sink.messages) == 5
        assert len(sink.connections) == 2
    finally:
        await transport.close()


async def test_global_connection_cap_closes_idle_connections():
    transport = SmtpTransport(delivery(max_connections=1), "gw.example.com")
    try:
        async with SinkServer() as first, SinkServer() as second:
            assert (await send(transport, smarthost(first.port))).status == "delivered"
            assert (await send(transport, smarthost(second.port))).status == "delivered"
            assert transport.pool.open == 1
            assert (await send(transport, smarthost(first.port))).status == "delivered"
            assert len(first.connections) == 2
            # At the cap with the only connection busy, the other destination waits its turn.
            first.delay = second.delay = 0.1
            results = await asyncio.gather(send(transport, smarthost(first.port)),
                                           send(transport, smarthost(second.port)))
            assert [r.status for r in results] == ["delivered", "delivered"]
            assert transport.pool.open == 1
    finally:
        await transport.close()


async def test_source_address_is_bound(transport, sink):
    result = await send(transport, smarthost(sink.port), source="127.0.0.3")
    assert result.status == "delivered"
    assert result.source_address == "127.0.0.3"
    assert sink.messages[0].peer[0] == "127.0.0.3"


# -- replies ---------------------------------------------------------------------------------------

async def test_rcpt_4xx_defers(transport):
    async with SinkServer(fail={"RCPT": "450 4.2.0 Mailbox busy"}) as sink:
        result = await send(transport, smarthost(sink.port))
    assert (result.status, result.code, result.enhanced, result.text) == ("deferred", 450, "4.2.0", "Mailbox busy")


async def test_rcpt_5xx_bounces(transport):
    async with SinkServer(fail_rcpt={"to@example.net": "550 5.1.1 No such user"}) as sink:
        result = await send(transport, smarthost(sink.port))
        assert (result.status, result.code, result.enhanced) == ("bounced", 550, "5.1.1")
        assert result.remote_host == "127.0.0.1"
        # The connection survived the refusal and carries the next message.
        assert (await send(transport, smarthost(sink.port), recipient="ok@example.net")).status == "delivered"
        assert len(sink.connections) == 1


async def test_data_5xx_bounces(transport):
    async with SinkServer(fail={"DATA": "554 5.6.0 Content rejected"}) as sink:
        result = await send(transport, smarthost(sink.port))
    assert (result.status, result.enhanced) == ("bounced", "5.6.0")


async def test_disconnect_after_data_defers(transport):
    async with SinkServer(disconnect_after_data=True) as sink:
        result = await send(transport, smarthost(sink.port))
        assert result.status == "deferred"
        assert sink.attempts == 1                  # ambiguous: not retried on another host now
    assert transport.pool.open == 0


async def test_no_reply_after_data_defers():
    transport = SmtpTransport(delivery(data_timeout=0.3), "gw.example.com")
    try:
        async with SinkServer(delay=0.8) as sink:
            result = await send(transport, smarthost(sink.port))
        assert result.status == "deferred"
    finally:
        await transport.close()


async def test_absent_server_defers(transport):
    async with SinkServer() as sink:
        port = sink.port
    result = await send(transport, smarthost(port))
    assert (result.status, result.code) == ("deferred", 0)
    assert result.remote_host == "127.0.0.1"


async def test_smtputf8_without_support_bounces_5_6_7(transport):
    async with ScriptedServer(extensions=("8BITMIME",)) as server:
        result = await send(transport, smarthost(server.port), recipient="jörg@example.net", utf8=True)
    assert (result.status, result.enhanced) == ("bounced", "5.6.7")
    assert not any(c.startswith(b"MAIL") for c in server.commands)


async def test_8bit_without_8bitmime_bounces_5_6_3(transport):
    async with ScriptedServer(extensions=("SIZE 1000000",)) as server:
        result = await send(transport, smarthost(server.port), data=MESSAGE + "é\r\n".encode(), body_8bit=True)
        assert (result.status, result.enhanced) == ("bounced", "5.6.3")
        # A 7-bit message still goes through, with the SIZE declaration (RFC 1870).
        assert (await send(transport, smarthost(server.port))).status == "delivered"
    # On the wire: dot-stuffed (RFC 5321 §4.5.2) and terminated.
    assert server.messages == [MESSAGE.replace(b"\r\n.leading", b"\r\n..leading") + b".\r\n"]
    assert f"MAIL FROM:<app@example.com> SIZE={len(MESSAGE)}".encode() in server.commands


async def test_8bit_and_utf8_options_are_passed(transport, sink):
    data = MESSAGE + "Grüße\r\n".encode()
    result = await send(transport, smarthost(sink.port), data=data, recipient="jörg@example.net",
                        utf8=True, body_8bit=True)
    assert result.status == "delivered"
    [received] = sink.messages
    assert received.data == data
    assert received.recipients == ["jörg@example.net"]
    assert "BODY=8BITMIME" in received.mail_options and "SMTPUTF8" in received.mail_options


# -- TLS -------------------------------------------------------------------------------------------

async def test_opportunistic_starttls_with_self_signed_certificate(transport, certificate):
    async with SinkServer(tls_context=server_context(certificate)) as sink:
        result = await send(transport, smarthost(sink.port, tls="opportunistic", verify=False))
        assert result.status == "delivered"
        [conn] = transport.pool.idle_connections()
        assert conn.tls
    assert sink.messages[0].data == MESSAGE


async def test_opportunistic_falls_back_to_plaintext(transport, certificate):
    context = server_context(certificate)
    # TLS 1.2 with RSA-only cipher suites but an EC key: "no shared cipher", every time.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("aRSA")
    async with SinkServer(tls_context=context) as sink:
        result = await send(transport, smarthost(sink.port, tls="opportunistic", verify=False))
        assert result.status == "delivered"
        [conn] = transport.pool.idle_connections()
        assert not conn.tls
        assert len(sink.connections) == 2
    assert sink.messages[0].data == MESSAGE


async def test_required_starttls_missing_defers(transport, sink):
    result = await send(transport, smarthost(sink.port, tls="starttls"))
    assert (result.status, result.enhanced, result.text) == ("deferred", "4.7.4", "TLS not available")
    assert sink.messages == []


async def test_required_starttls_verifies_the_certificate(transport, certificate):
    async with SinkServer(tls_context=server_context(certificate)) as sink:
        result = await send(transport, smarthost(sink.port, tls="starttls", verify=True))
    assert (result.status, result.enhanced) == ("deferred", "4.7.5")
    assert sink.messages == []


async def test_auth_after_starttls_and_no_secret_in_results(transport, certificate):
    async with SinkServer(tls_context=server_context(certificate), auth=("user", "s3cret-pw")) as sink:
        good = smarthost(sink.port, tls="starttls", verify=False, username="user", password=Secret("s3cret-pw"))
        result = await send(transport, dataclasses.replace(good, password=Secret("wrong-pw")))
        assert (result.status, result.code, result.enhanced) == ("deferred", 535, "4.7.8")
        assert "wrong-pw" not in repr(result)
        assert transport.pool.open == 0            # a failed login is never pooled
        result = await send(transport, good)
        assert result.status == "delivered"
        assert "s3cret-pw" not in repr(result)
    assert sink.messages[0].data == MESSAGE


# -- MX routing ------------------------------------------------------------------------------------

ZONE = {
    "example.net": {"MX": ["20 mx2.example.net.", "10 mx1.example.net."]},
    "mx1.example.net": {"A": ["127.0.0.2"]},
    "mx2.example.net": {"A": ["127.0.0.1"]},
    "nullmx.test": {"MX": ["0 ."]},
    "broken.test": {"SERVFAIL": True},
}


@pytest.fixture
async def dns():
    async with DnsServer(ZONE) as server:
        yield server


async def send_mx(dns: DnsServer, domain: str, port: int, *, source: str | None = None) -> AttemptResult:
    """One delivery by MX lookup, with a fresh transport resolving through ``dns``."""
    transport = SmtpTransport(delivery(dns_nameservers=(("127.0.0.1", dns.port),)), "gw.example.com")
    route = Route(transport="smtp", destination=domain, hosts=None, port=port, tls="opportunistic", verify=False)
    try:
        return await send(transport, route, source=source)
    finally:
        await transport.close()


async def test_mx_order_prefers_the_lowest_preference(dns, sink):
    async with SinkServer("127.0.0.2", sink.port) as preferred:
        result = await send_mx(dns, "example.net", sink.port)
    assert (result.status, result.remote_host) == ("delivered", "mx1.example.net")
    assert len(preferred.messages) == 1 and sink.messages == []


async def test_mx_fallback_when_the_first_is_down(dns, sink):
    result = await send_mx(dns, "example.net", sink.port)
    assert (result.status, result.remote_host) == ("delivered", "mx2.example.net")
    assert sink.messages[0].data == MESSAGE


async def test_mx_fallback_on_4xx_greeting(dns, sink):
    async with ScriptedServer("127.0.0.2", sink.port, greeting="421 4.3.2 busy") as busy:
        result = await send_mx(dns, "example.net", sink.port)
    assert (result.status, result.remote_host) == ("delivered", "mx2.example.net")
    assert busy.commands == [] and len(sink.messages) == 1


async def test_all_mx_down_defers(dns):
    async with SinkServer() as gone:
        port = gone.port
    result = await send_mx(dns, "example.net", port)
    assert (result.status, result.remote_host) == ("deferred", "mx2.example.net")


@pytest.mark.parametrize("domain, status, enhanced", [
    ("nullmx.test", "bounced", "5.1.10"),
    ("missing.test", "bounced", "5.1.2"),
    ("broken.test", "deferred", "4.4.3"),
])
async def test_dns_outcomes(dns, domain, status, enhanced):
    result = await send_mx(dns, domain, 25, source="127.0.0.3")
    assert (result.status, result.enhanced, result.source_address) == (status, enhanced, "127.0.0.3")


async def test_send_after_close_defers(sink):
    transport = SmtpTransport(delivery(), "gw.example.com")
    await transport.close()
    result = await send(transport, smarthost(sink.port))
    assert (result.status, result.enhanced) == ("deferred", "4.3.2")
    assert sink.connections == []
