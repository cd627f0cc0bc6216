"""Submission (STARTTLS + AUTH), smtps (implicit TLS), AUTH lockout, STARTTLS injection,
TLS handshake timeout (reliability.md §8 rows 6, 40-42, 48)."""
from __future__ import annotations

import asyncio
import base64
import ssl

import aiosmtplib
import pytest
from conftest import MESSAGE
from rawsmtp import RawClient
from tlsutil import client_context, make_cert

from gateway.testing import GatewayHarness, make_config


@pytest.fixture
def cert(tmp_path):
    return make_cert(tmp_path)


def tls_config(tmp_path, sink, cert, mode="submission", limits=""):
    cert_file, key_file = cert
    listener = f'\n[[listener]]\naddress = "127.0.0.1:0"\nmode = "{mode}"\ntls_cert = "{cert_file}"\ntls_key = "{key_file}"\n'
    text = make_config(tmp_path, sink.port, accounts='password = { env = "APP_PW" }', limits=limits)
    # The second listener goes right after the first one.
    return text.replace("[accounts.app]", listener.strip() + "\n\n[accounts.app]", 1)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_submission_starttls_auth_and_delivery(tmp_path, sink, cert):
    async with GatewayHarness(tls_config(tmp_path, sink, cert), env={"APP_PW": "s3cret"}) as gw:
        host, port = gw.listener(1)
        async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=client_context(cert[0]),
                                   username="app", password="s3cret") as client:
            errors, _ = await client.sendmail("app@example.com", ["to@example.net"], MESSAGE)
            assert errors == {}
        await sink.wait_for(1)
    assert sink.messages[0].recipients == ["to@example.net"]


async def test_submission_requires_starttls_before_mail(tmp_path, sink, cert):
    async with GatewayHarness(tls_config(tmp_path, sink, cert), env={"APP_PW": "s3cret"}) as gw:
        c = await RawClient.connect(*gw.listener(1))
        ehlo = await c.ehlo()
        assert b"STARTTLS" in b"\n".join(ehlo.lines) and b"AUTH" not in b"\n".join(ehlo.lines)
        reply = await c.cmd("MAIL FROM:<app@example.com>")
        assert (reply.code, reply.enhanced) == (530, "5.7.0")
        reply = await c.cmd("AUTH PLAIN " + plain("app", "s3cret"))          # row 40
        assert (reply.code, reply.enhanced) == (530, "5.7.0")
        await c.close()


async def test_smtps_implicit_tls_auth(tmp_path, sink, cert):
    async with GatewayHarness(tls_config(tmp_path, sink, cert, mode="smtps"), env={"APP_PW": "s3cret"}) as gw:
        host, port = gw.listener(1)
        async with aiosmtplib.SMTP(hostname=host, port=port, use_tls=True, tls_context=client_context(cert[0]),
                                   username="app", password="s3cret") as client:
            errors, _ = await client.sendmail("app@example.com", ["to@example.net"], MESSAGE)
            assert errors == {}
        await sink.wait_for(1)


async def test_unauthenticated_submission_session_is_refused(tmp_path, sink, cert):
    async with GatewayHarness(tls_config(tmp_path, sink, cert), env={"APP_PW": "s3cret"}) as gw:
        async with aiosmtplib.SMTP(hostname=gw.listener(1)[0], port=gw.listener(1)[1], start_tls=True,
                                   tls_context=client_context()) as client:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
                await client.sendmail("app@example.com", ["to@example.net"], MESSAGE)
            assert info.value.code == 530


async def starttls(gw, cert) -> RawClient:
    c = await RawClient.connect(*gw.listener(1))
    await c.ehlo()
    reply = await c.cmd("STARTTLS")
    assert (reply.code, reply.enhanced) == (220, "2.0.0")
    await c.writer.start_tls(client_context(cert[0]), server_hostname="gw.example.com")
    await c.ehlo()
    return c


async def test_rows_41_42_auth_failures_lockout_and_bad_base64(tmp_path, sink, cert):
    config = tls_config(tmp_path, sink, cert, limits="auth_max_failures = 3")
    async with GatewayHarness(config, env={"APP_PW": "s3cret"}) as gw:
        c = await starttls(gw, cert)
        reply = await c.cmd("AUTH PLAIN !!!notbase64")
        assert (reply.code, reply.enhanced) == (501, "5.5.2")
        reply = await c.cmd("AUTH PLAIN " + "A" * 13000)
        assert (reply.code, reply.enhanced) in ((500, "5.5.2"), (500, "5.5.6"))
        for _ in range(2):
            reply = await c.cmd("AUTH PLAIN " + plain("app", "wrong"))
            assert (reply.code, reply.enhanced) == (535, "5.7.8")
        reply = await c.cmd("AUTH PLAIN " + plain("app", "wrong"))
        assert (reply.code, reply.enhanced) == (421, "4.7.0")
        assert await c.closed()
        # Locked out now, even with the right password.
        c = await starttls(gw, cert)
        reply = await c.cmd("AUTH PLAIN " + plain("app", "s3cret"))
        assert (reply.code, reply.enhanced) == (454, "4.7.0")
        await c.close()


async def test_auth_login_mechanism_and_secret_never_logged(tmp_path, sink, cert, capsys):
    async with GatewayHarness(tls_config(tmp_path, sink, cert), env={"APP_PW": "s3cret"}) as gw:
        c = await starttls(gw, cert)
        assert (await c.cmd("AUTH LOGIN")).code == 334
        assert (await c.cmd(base64.b64encode(b"app").decode())).code == 334
        reply = await c.cmd(base64.b64encode(b"s3cret").decode())
        assert (reply.code, reply.enhanced) == (235, "2.7.0")
        await c.close()
    assert "s3cret" not in capsys.readouterr().out


async def test_row_6_starttls_command_injection_is_discarded(tmp_path, sink, cert):
    async with GatewayHarness(tls_config(tmp_path, sink, cert), env={"APP_PW": "s3cret"}) as gw:
        c = await RawClient.connect(*gw.listener(1))
        await c.ehlo()
        await c.send(b"STARTTLS\r\nNOOP\r\n")              # NOOP in the same segment, in plaintext
        reply = await c.reply()
        assert reply.code == 220
        await c.writer.start_tls(client_context(cert[0]), server_hostname="gw.example.com")
        # If the plaintext NOOP had been kept, its 250 would arrive first inside TLS.
        reply = await c.cmd("EHLO after.tls")
        assert reply.code == 250 and b"AUTH PLAIN LOGIN" in b"\n".join(reply.lines)
        await c.close()


async def test_row_48_tls_handshake_never_completed(tmp_path, sink, cert):
    config = tls_config(tmp_path, sink, cert, limits='tls_handshake_timeout = "500ms"')
    async with GatewayHarness(config, env={"APP_PW": "s3cret"}) as gw:
        c = await RawClient.connect(*gw.listener(1))
        await c.ehlo()
        assert (await c.cmd("STARTTLS")).code == 220
        # Say nothing: the server must give up on the handshake and close.
        assert await c.closed(timeout=5)


async def test_smtps_handshake_timeout(tmp_path, sink, cert):
    config = tls_config(tmp_path, sink, cert, mode="smtps", limits='tls_handshake_timeout = "500ms"')
    async with GatewayHarness(config, env={"APP_PW": "s3cret"}) as gw:
        reader, writer = await asyncio.open_connection(*gw.listener(1))
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()


async def test_passwd_hash_authenticates(tmp_path, sink, cert):
    """`ses-gateway passwd` prints a scrypt hash; an account with password_hash = it logs in."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "gateway", "passwd"], input="correct horse\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("scrypt$")
    hashed = result.stdout.strip()
    config = tls_config(tmp_path, sink, cert).replace('password = { env = "APP_PW" }', f'password_hash = "{hashed}"')
    async with GatewayHarness(config) as gw:
        c = await starttls(gw, cert)
        reply = await c.cmd("AUTH PLAIN " + plain("app", "wrong horse"))
        assert (reply.code, reply.enhanced) == (535, "5.7.8")
        reply = await c.cmd("AUTH PLAIN " + plain("app", "correct horse"))
        assert (reply.code, reply.enhanced) == (235, "2.7.0")
        await c.close()
