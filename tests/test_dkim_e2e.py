"""DKIM end to end (issue 3): every message the gateway delivers is signed for its header-From
domain, last, after plugins changed it; signatures verify with dkimpy against the key served
by a local DNS server; an account may only send as its own signing domains."""
from __future__ import annotations

import email.message
import email.policy

import aiosmtplib
import pytest
from conftest import MESSAGE
from rawsmtp import RawClient
from test_signing import tags, verify_all

from gateway import hookimpl
from gateway.signing import load_keys
from gateway.testing import GatewayHarness, make_config


class Unsubscribe:
    """Stands in for the unsubscribe plugin: adds RFC 8058 headers per recipient."""

    @hookimpl
    def gateway_message_prepare(self, delivery, message):
        message.set("List-Unsubscribe", f"<https://gw.example.com/u/{delivery.recipient}>")
        message.set("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")


def html_message() -> bytes:
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["To"], msg["Subject"] = "app@example.com", "to@example.net", "Grüße aus Shenzhen 你好"
    msg.set_content("plain part ü\n")
    msg.add_alternative("<p>html <b>part</b> ü</p>", subtype="html")
    msg.add_attachment(bytes(range(256)) * 20, maintype="application", subtype="octet-stream", filename="x.bin")
    return msg.as_bytes()


MESSAGES = {
    "plain": MESSAGE,
    "html-multipart-attachment-2047-subject": html_message(),
    "8bit": "From: app@example.com\r\nTo: to@example.net\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, 你好\r\n".encode(),
    "lf-only-legacy": b"From: app@example.com\nTo: to@example.net\nSubject: legacy\n\nline one\nline two\n",
}


@pytest.fixture
async def zone(tmp_path):
    config_text = make_config(tmp_path, 1)
    from gateway.config import parse
    signer = load_keys(parse(config_text))
    return {name: {"TXT": [value]} for name, value in signer.public_key_record("example.com")}


@pytest.mark.parametrize("name", sorted(MESSAGES))
async def test_delivered_mail_is_signed_and_verifies(tmp_path, sink, zone, name):
    async with GatewayHarness(make_config(tmp_path, sink.port), plugins=[("fake_unsubscribe", Unsubscribe())]) as gw:
        client = await RawClient.connect(gw.host, gw.port)
        await client.start(recipients=("to@example.net",))
        reply = await client.data(MESSAGES[name].rstrip(b"\r\n") if name != "lf-only-legacy" else MESSAGES[name].rstrip(b"\n"))
        assert reply.code == 250, reply
        await client.close()
        await sink.wait_for(1)
    data = sink.messages[0].data
    assert await verify_all(data, zone) == [True]
    signed = tags(data)
    assert signed[b"d"] == b"example.com" and signed[b"c"] == b"relaxed/relaxed" and b"l" not in signed
    header_list = [h.strip().lower() for h in signed[b"h"].split(b":")]
    assert header_list.count(b"list-unsubscribe") == 2 and header_list.count(b"list-unsubscribe-post") == 2
    assert header_list.count(b"from") == 2
    # Tampering with a signed header or the body breaks it.
    assert await verify_all(data.replace(b"To: to@example.net", b"To: tom@example.net", 1), zone) == [False]
    body_at = data.index(b"\r\n\r\n") + 4
    assert await verify_all(data[:body_at] + b"X" + data[body_at:], zone) == [False]


async def test_dsn_from_gateway_domain_is_sent_unsigned(tmp_path):
    from gateway.testing import SinkServer
    async with SinkServer(fail_rcpt={"bad@example.net": "550 5.1.1 No such user"}) as sink:
        async with GatewayHarness(make_config(tmp_path, sink.port)) as gw:
            async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port) as client:
                await client.sendmail("app@example.com", ["bad@example.net"], MESSAGE)
            await sink.wait_for(1)
    assert sink.messages[0].sender == "" and not sink.messages[0].data.startswith(b"DKIM-Signature")


@pytest.mark.parametrize("sender", ["app@other.example", "app@sub.example.com"])
async def test_envelope_sender_of_a_foreign_domain_is_refused_at_mail(tmp_path, sink, sender):
    async with GatewayHarness(make_config(tmp_path, sink.port)) as gw:
        client = await RawClient.connect(gw.host, gw.port)
        await client.ehlo()
        reply = await client.cmd(f"MAIL FROM:<{sender}>")
        assert (reply.code, reply.enhanced) == (550, "5.7.1") and "FailedOperation.NotAuthenticatedSender" in reply.text
        await client.close()


async def test_header_from_of_a_foreign_domain_is_refused_at_data(tmp_path, sink):
    async with GatewayHarness(make_config(tmp_path, sink.port)) as gw:
        client = await RawClient.connect(gw.host, gw.port)
        await client.start()
        reply = await client.data(b"From: ceo@bank.example\r\nSubject: wire money\r\n\r\nnow")
        assert (reply.code, reply.enhanced) == (550, "5.7.1") and "NotAuthenticatedSender" in reply.text
        await client.close()
    assert sink.messages == []


async def test_domain_without_a_key_is_refused(tmp_path, sink):
    config = make_config(tmp_path, sink.port, dkim=False)
    async with GatewayHarness(config) as gw:
        client = await RawClient.connect(gw.host, gw.port)
        await client.ehlo()
        reply = await client.cmd("MAIL FROM:<app@example.com>")
        assert (reply.code, reply.enhanced) == (550, "5.7.1")
        await client.close()


async def test_generate_creates_a_missing_key(tmp_path, sink):
    key_file = tmp_path / "new" / "example.com.s9.pem"
    config = make_config(tmp_path, sink.port, dkim=False,
                         extra=f'[dkim."example.com"]\nselector = "s9"\nkey_file = "{key_file}"\ngenerate = true\n')
    async with GatewayHarness(config) as gw:
        assert gw.gateway.signer.can_sign("example.com")
    assert key_file.stat().st_mode & 0o777 == 0o600
