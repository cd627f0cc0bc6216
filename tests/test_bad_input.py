"""The bad-input catalogue (reliability.md §8, rows 1-33 and 39-54): one test per row, each
asserting the exact reply and enhanced code and that nothing was queued (or, where the row
says accept, exactly one clean message)."""
from __future__ import annotations

import asyncio
import base64

import pytest
from conftest import MESSAGE, queued_files
from rawsmtp import RawClient

from gateway.testing import GatewayHarness, make_config

H = b"From: app@example.com\r\nTo: to@example.net\r\nSubject: t\r\n\r\n"


@pytest.fixture
def make_gw(tmp_path, sink):
    def make(**kwargs) -> GatewayHarness:
        return GatewayHarness(make_config(tmp_path, sink.port, **kwargs))
    return make


async def client(gw: GatewayHarness) -> RawClient:
    return await RawClient.connect(gw.host, gw.port)


def expect(reply, code: int, enhanced: str) -> None:
    assert (reply.code, reply.enhanced) == (code, enhanced), reply


async def spool_only_delivered(tmp_path, sink, count: int) -> None:
    await sink.wait_for(count)
    await asyncio.sleep(0.1)
    assert len(sink.messages) == count


# -- rows 1-5: end-of-data and line endings ---------------------------------------------------------

@pytest.mark.parametrize("payload", [b"\n.\r\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n"])
async def test_rows_1_2_smuggling_is_one_normalised_message(make_gw, sink, tmp_path, payload):
    smuggled = b"hello" + payload + b"MAIL FROM:<evil@evil.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSmuggled\r\n"
    async with make_gw() as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(H + smuggled), 250, "2.0.0")
        await c.close()
        await spool_only_delivered(tmp_path, sink, 1)
    data = sink.messages[0].data
    assert b"MAIL FROM:<evil@evil.example>" in data          # inside the one message, as text
    assert b"\r\n" in data and b"\r\r" not in data
    assert data.count(b"\n") == data.count(b"\r\n") and data.count(b"\r") == data.count(b"\r\n")


@pytest.mark.parametrize("payload,enhanced_text", [(b"\n.\r\n", "Bare <LF>"), (b"\r.\r", "Bare <CR>")])
async def test_rows_1_2_smuggling_refused_where_bare_lf_rejected(make_gw, tmp_path, payload, enhanced_text):
    async with make_gw(listener='bare_lf = "reject"') as gw:
        c = await client(gw)
        await c.start()
        reply = await c.data(H + b"hello" + payload + b"MAIL FROM:<evil@evil.example>\r\n")
        expect(reply, 550, "5.5.2")
        assert enhanced_text in reply.text
        await c.close()
    assert queued_files(tmp_path) == []


async def test_row_3_lf_dot_lf_is_not_end_of_data(make_gw, tmp_path):
    async with make_gw(limits='data_timeout = "1s"') as gw:
        c = await client(gw)
        await c.start()
        await c.cmd("DATA")
        await c.send(H + b"body\n.\n")
        reply = await c.reply(timeout=5)
        expect(reply, 421, "4.4.2")
        assert await c.closed()
    assert queued_files(tmp_path) == []


@pytest.mark.parametrize("body", [b"a\r\n\x00.\r\nb", b"a\r\n.\x00\r\nb"])
async def test_row_4_nul_variants_are_not_end_of_data_and_refused(make_gw, tmp_path, body):
    async with make_gw() as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(H + body), 554, "5.6.0")
        await c.close()
    assert queued_files(tmp_path) == []


async def test_row_4_cr_cr_lf_dot_is_not_end_of_data(make_gw, sink, tmp_path):
    async with make_gw() as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(H + b"a\r\r\n.\r\r\nb"), 250, "2.0.0")
        await c.close()
        await spool_only_delivered(tmp_path, sink, 1)
    assert b"\r\r" not in sink.messages[0].data


async def test_row_5_lf_only_legacy_body_is_normalised(make_gw, sink, tmp_path):
    body = b"From: app@example.com\nTo: to@example.net\nSubject: legacy\n\n" + b"".join(
        b"line %d of a legacy LF-only body, long enough to pass 1000 bytes\n" % i for i in range(40))
    async with make_gw() as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(body), 250, "2.0.0")
        await c.close()
        await spool_only_delivered(tmp_path, sink, 1)
    data = sink.messages[0].data
    assert data.count(b"\r\n") == data.count(b"\n") >= 44
    assert b"line 39 of a legacy" in data


async def test_row_5_lf_only_refused_where_bare_lf_rejected(make_gw, tmp_path):
    async with make_gw(listener='bare_lf = "reject"') as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(b"From: app@example.com\nSubject: x\n\nbody\n"), 550, "5.5.2")
        await c.close()
    assert queued_files(tmp_path) == []


# -- rows 7-15: limits and sequence -----------------------------------------------------------------------

async def test_row_7_command_line_too_long(make_gw, tmp_path):
    async with make_gw() as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd("NOOP " + "x" * 600), 500, "5.5.2")
        expect(await c.cmd("NOOP"), 250, "2.0.0")         # the session goes on
        await c.close()


async def test_row_8_overlong_text_line_is_reencoded(make_gw, sink, tmp_path):
    long_line = b"x" * 50000
    async with make_gw() as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(H + long_line + b"\r\nend\r\n"), 250, "2.0.0")
        await c.close()
        await spool_only_delivered(tmp_path, sink, 1)
    data = sink.messages[0].data
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert b"quoted-printable" in data.lower()
    import email
    parsed = email.message_from_bytes(data)
    assert parsed.get_payload(decode=True).startswith(long_line)


@pytest.mark.parametrize("param,code,enhanced", [
    ("SIZE=999999999", 552, "5.3.4"), ("SIZE=abc", 501, "5.5.4"), ("SIZE=-1", 501, "5.5.4"),
    ("BODY=9BIT", 501, "5.5.4"), ("FOO=bar", 555, "5.5.4"),
])
async def test_rows_9_10_mail_parameters(make_gw, tmp_path, param, code, enhanced):
    async with make_gw() as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd(f"MAIL FROM:<app@example.com> {param}"), code, enhanced)
        await c.close()


async def test_row_11_data_over_size_limit_without_size(make_gw, tmp_path):
    async with make_gw(limits='max_message_size = "10KB"') as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(H + b"y" * 200 + (b"\r\n" + b"z" * 500) * 40), 552, "5.3.4")
        expect(await c.cmd("NOOP"), 250, "2.0.0")
        await c.close()
    assert queued_files(tmp_path) == []


async def test_row_12_too_many_recipients(make_gw, tmp_path):
    async with make_gw(limits="max_recipients = 3") as gw:
        c = await client(gw)
        await c.start(recipients=("a@example.net", "b@example.net", "c@example.net"))
        expect(await c.cmd("RCPT TO:<d@example.net>"), 452, "4.5.3")
        await c.close()


async def test_row_13_bad_sequences(make_gw, tmp_path):
    async with make_gw() as gw:
        c = await client(gw)
        expect(await c.cmd("MAIL FROM:<app@example.com>"), 503, "5.5.1")   # before EHLO
        await c.ehlo()
        expect(await c.cmd("RCPT TO:<a@example.net>"), 503, "5.5.1")
        expect(await c.cmd("DATA"), 503, "5.5.1")
        expect(await c.cmd("MAIL FROM:<app@example.com>"), 250, "2.1.0")
        expect(await c.cmd("MAIL FROM:<app@example.com>"), 503, "5.5.1")   # nested
        expect(await c.cmd("DATA"), 503, "5.5.1")                          # no RCPT yet
        await c.close()
    assert queued_files(tmp_path) == []


async def test_row_14_unknown_commands_then_close(make_gw):
    async with make_gw() as gw:
        c = await client(gw)
        for _ in range(5):
            expect(await c.cmd("BOGUS"), 500, "5.5.2")
        expect(await c.cmd("BOGUS"), 421, "4.7.0")
        assert await c.closed()


async def test_row_15_command_flood(make_gw):
    async with make_gw(limits="max_junk_commands = 20") as gw:
        c = await client(gw)
        for _ in range(20):
            expect(await c.cmd("NOOP"), 250, "2.0.0")
        expect(await c.cmd("NOOP"), 421, "4.7.0")
        assert await c.closed()


# -- rows 16-24, 28: addresses ------------------------------------------------------------------------------

@pytest.mark.parametrize("address,code,enhanced", [
    ("<c\x00d@example.net>", 501, "5.5.4"),                       # 16
    ("<c\x01d@example.net>", 501, "5.5.4"),                       # 16
    ("<user%far.example@example.net>", 553, "5.1.3"),            # 18
    ("<far.example!user@example.net>", 553, "5.1.3"),            # 19
    ("<far.example!user>", 553, "5.1.3"),                        # 19
    ('<"user@far.example"@example.net>', 553, "5.1.3"),          # 20
    ("<user@far.example@example.net>", 553, "5.1.3"),            # 21
    ("<user@[192.0.2.1]>", 550, "5.7.1"),                         # 22
    ("<" + "l" * 65 + "@example.net>", 553, "5.1.3"),             # 23
    ("<u@" + "d" * 60 + "." + "e" * 60 + "." + "f" * 60 + "." + "g" * 60 + "." + "h" * 60 + ".example>", 501, "5.1.3"),  # 23
    ("<jörg@example.net>", 553, "5.6.7"),                        # 24
    ("<user@example.net.>", 553, "5.1.3"),
])
async def test_rows_16_to_24_bad_recipient_addresses(make_gw, tmp_path, address, code, enhanced):
    async with make_gw() as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd("MAIL FROM:<app@example.com>"), 250, "2.1.0")
        expect(await c.cmd(b"RCPT TO:" + address.encode()), code, enhanced)
        await c.close()
    assert queued_files(tmp_path) == []


async def test_row_16_control_character_in_sender(make_gw):
    async with make_gw() as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd(b"MAIL FROM:<a\x00b@example.com>"), 501, "5.5.4")
        await c.close()


async def test_row_17_source_route_is_stripped(make_gw, sink, tmp_path):
    async with make_gw() as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd("MAIL FROM:<app@example.com>"), 250, "2.1.0")
        expect(await c.cmd("RCPT TO:<@relay.example:victim@far.example>"), 250, "2.1.5")
        expect(await c.data(H + b"x\r\n"), 250, "2.0.0")
        await c.close()
        await sink.wait_for(1)
    assert sink.messages[0].recipients == ["victim@far.example"]


async def test_row_24_28_smtputf8_and_idn(make_gw, sink, tmp_path):
    async with make_gw() as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd("MAIL FROM:<app@example.com> SMTPUTF8"), 250, "2.1.0")
        expect(await c.cmd("RCPT TO:<jörg@bücher.example>"), 250, "2.1.5")
        expect(await c.cmd("RCPT TO:<x@xn--a.example>"), 553, "5.1.3")     # invalid A-label
        expect(await c.data(H + b"x\r\n"), 250, "2.0.0")
        await c.close()
        await sink.wait_for(1)
    assert sink.messages[0].recipients == ["jörg@xn--bcher-kva.example"]


# -- rows 27, 29-33: content ------------------------------------------------------------------------------------

async def test_row_27_invalid_utf8_header_passes_through(make_gw, sink, tmp_path):
    async with make_gw() as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(b"From: app@example.com\r\nSubject: caf\xe9 \xff\r\n\r\nx\r\n"), 250, "2.0.0")
        await c.close()
        await sink.wait_for(1)
    assert b"Subject: caf\xe9 \xff\r\n" in sink.messages[0].data


@pytest.mark.parametrize("headers,code,enhanced", [
    (b"From: a@example.com\r\nFrom: b@example.com\r\n", 550, "5.6.0"),     # 29
    (b"To: x@example.net\r\n", 550, "5.6.0"),                               # 29
    (b"From: a@example.com\r\nNo colon here\r\n", 554, "5.6.0"),            # 32
    (b"From: a@example.com\r\nX-B\xe4d: x\r\n", 554, "5.6.0"),              # 32
    (b"From: a@example.com\r\n" + b"Received: from x by y\r\n" * 51, 554, "5.4.6"),  # 33
])
async def test_rows_29_32_33_malformed_content(make_gw, tmp_path, headers, code, enhanced):
    async with make_gw() as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(headers + b"\r\nbody\r\n"), code, enhanced)
        await c.close()
    assert queued_files(tmp_path) == []


async def test_rows_30_31_missing_ids_added_and_bcc_stripped(make_gw, sink, tmp_path):
    async with make_gw() as gw:
        c = await client(gw)
        await c.start()
        expect(await c.data(b"From: app@example.com\r\nBcc: secret@example.net\r\nSubject: s\r\n\r\nx\r\n"), 250, "2.0.0")
        await c.close()
        await sink.wait_for(1)
    data = sink.messages[0].data
    assert b"\r\nMessage-ID: <" in data and b"@gw.example.com>" in data
    assert b"\r\nDate: " in data
    assert b"secret@example.net" not in data and b"Bcc" not in data


# -- rows 39-54: access, AUTH, connections, timeouts, resources -------------------------------------------------

async def test_row_39_unauthenticated_non_allowlisted_client(tmp_path, sink):
    config = make_config(tmp_path, sink.port).replace('networks = ["127.0.0.0/8"]', 'networks = ["10.0.0.0/8"]')
    async with GatewayHarness(config) as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd("MAIL FROM:<app@example.com>"), 530, "5.7.0")
        await c.close()


async def test_row_40_auth_before_starttls(make_gw):
    async with make_gw() as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd("AUTH PLAIN " + base64.b64encode(b"\0app\0pw").decode()), 538, "5.7.11")
        await c.close()


async def test_row_43_allowlisted_peer_without_account_cannot_relay(tmp_path, sink):
    config = make_config(tmp_path, sink.port).replace('account = "app"\n', "", 1)
    async with GatewayHarness(config) as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd("MAIL FROM:<app@example.com>"), 250, "2.1.0")
        expect(await c.cmd("RCPT TO:<to@example.net>"), 554, "5.7.1")
        await c.close()
    assert queued_files(tmp_path) == []


async def test_row_44_per_ip_connection_limit(make_gw):
    async with make_gw(limits="max_connections_per_ip = 2") as gw:
        first, second = await client(gw), await client(gw)
        third = await RawClient.connect(gw.host, gw.port, greet=False)
        expect(await third.reply(), 421, "4.7.0")
        assert await third.closed()
        for c in (first, second):
            await c.close()


async def test_row_45_global_connection_cap(make_gw):
    async with make_gw(limits="max_connections = 2") as gw:
        clients = [await client(gw), await client(gw)]
        extra = await RawClient.connect(gw.host, gw.port, greet=False)
        expect(await extra.reply(), 421, "4.3.2")
        assert await extra.closed()
        for c in clients:
            await c.close()


async def test_row_46_idle_client_times_out(make_gw):
    async with make_gw(limits='idle_timeout = "500ms"') as gw:
        c = await client(gw)
        expect(await c.reply(timeout=5), 421, "4.4.2")
        assert await c.closed()


async def test_row_47_trickled_data_hits_the_data_deadline(make_gw, tmp_path):
    async with make_gw(limits='data_timeout = "1s"') as gw:
        c = await client(gw)
        await c.start()
        await c.cmd("DATA")
        for _ in range(4):
            await c.send(b"x")
            await asyncio.sleep(0.4)
        expect(await c.reply(timeout=5), 421, "4.4.2")
        assert await c.closed()
    assert queued_files(tmp_path) == []


async def test_row_50_ehlo_helo_without_argument(make_gw):
    async with make_gw() as gw:
        c = await client(gw)
        expect(await c.cmd("EHLO"), 501, "5.5.4")
        expect(await c.cmd("HELO"), 501, "5.5.4")
        await c.close()


async def test_row_52_low_disk_space_refuses_at_mail(make_gw, tmp_path):
    async with make_gw(limits='min_free_space = "1000TB"') as gw:
        c = await client(gw)
        await c.ehlo()
        expect(await c.cmd("MAIL FROM:<app@example.com>"), 452, "4.3.1")
        await c.close()


async def test_row_53_spool_write_error_gives_451_and_queues_nothing(make_gw, tmp_path):
    async with make_gw() as gw:
        queue = tmp_path / "spool" / "queue" / "w0"
        c = await client(gw)
        await c.start()
        queue.rename(tmp_path / "moved")
        queue.write_text("not a directory")        # rename into it fails: ENOTDIR
        reply = await c.data(MESSAGE)
        expect(reply, 451, "4.3.0")
        await c.close()
        queue.unlink()
        (tmp_path / "moved").rename(queue)
    assert queued_files(tmp_path) == []
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


class Exploding:
    @staticmethod
    def gateway_data(gateway, session, transaction, message):
        raise RuntimeError("secret internal detail")


async def test_row_54_exception_in_handler_is_451_without_detail(tmp_path, sink):
    async with GatewayHarness(make_config(tmp_path, sink.port), plugins=[("exploding", Exploding())]) as gw:
        c = await client(gw)
        await c.start()
        reply = await c.data(MESSAGE)
        expect(reply, 451, "4.3.0")
        assert b"secret" not in b"".join(reply.lines)
        await c.close()
    assert queued_files(tmp_path) == []
