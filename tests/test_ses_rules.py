"""SES rules of DESIGN §4 at their boundaries, through real SMTP sessions (issue 4)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from ses_testutil import Clock, body, policy_config, transaction

from gateway import hookimpl, suppression
from gateway.testing import GatewayHarness, SinkServer


def codes(replies):
    return [(r.code, r.enhanced) for r in replies]


async def test_tenth_mail_to_a_recipient_passes_eleventh_is_blocked_until_midnight(tmp_path, sink):
    async with GatewayHarness(policy_config(tmp_path, sink.port, 'timezone = "Asia/Shanghai"')) as gw:
        clock = Clock(1795651200.0 + 3 * 3600 + 60).install(gw)     # 2026-11-26 11:01 Shanghai
        for _ in range(10):
            _, (rcpt,), data = await transaction(gw, ["x@example.net"], body())
            assert rcpt.code == 250 and data.code == 250
        _, (rcpt,), _ = await transaction(gw, ["x@example.net"], body())
        assert (rcpt.code, rcpt.enhanced) == (450, "4.7.1") and "FailedOperation.FrequencyLimit" in rcpt.text
        _, (other,), _ = await transaction(gw, ["y@example.net"], body())
        assert other.code == 250                          # the limit is per address
        clock.advance(2 * 3600)                           # a new hour: still blocked until 00:00
        _, (rcpt,), _ = await transaction(gw, ["x@example.net"], body())
        assert rcpt.code == 450
        clock.now = 1795651200.0 + 16 * 3600 + 1          # 00:00:01 next day in Asia/Shanghai
        _, (rcpt,), _ = await transaction(gw, ["x@example.net"], body())
        assert rcpt.code == 250
        await sink.wait_for(12)


@pytest.mark.parametrize("core_limit", [50, 100])
async def test_fiftieth_recipient_passes_fifty_first_gets_452(tmp_path, sink, core_limit):
    config = policy_config(tmp_path, sink.port, limits=f"max_recipients = {core_limit}")
    async with GatewayHarness(config) as gw:
        recipients = [f"r{i}@example.net" for i in range(51)]
        _, rcpts, data = await transaction(gw, recipients, body())
    assert all(r.code == 250 for r in rcpts[:50])
    assert (rcpts[50].code, rcpts[50].enhanced) == (452, "4.5.3")
    if core_limit > 50:                                   # the plugin answered, with the SES code
        assert "FailedOperation.TooManyRecipients" in rcpts[50].text
    assert data.code == 250


async def test_per_account_override(tmp_path, sink):
    config = policy_config(tmp_path, sink.port, accounts="[accounts.app.ses_policy]\nmax_recipients = 2\n")
    async with GatewayHarness(config) as gw:
        _, rcpts, _ = await transaction(gw, ["a@example.net", "b@example.net", "c@example.net"], body())
    assert codes(rcpts) == [(250, "2.1.5"), (250, "2.1.5"), (452, "4.5.3")]


async def test_daily_limit_concurrent_sessions_cannot_share_the_last_slot(tmp_path):
    async with SinkServer() as sink, GatewayHarness(policy_config(tmp_path, sink.port, "daily_limit = 5")) as gw:
        results = await asyncio.gather(*(transaction(gw, [f"c{i}@example.net"], body()) for i in range(16)))
        rcpts = [r for _, (r,), _ in results]
        assert sum(r.code == 250 for r in rcpts) == 5
        refused = [r for r in rcpts if r.code != 250]
        assert {(r.code, r.enhanced) for r in refused} == {(451, "4.7.1")}
        assert all("FailedOperation.ExceedSendLimit" in r.text for r in refused)
        await sink.wait_for(5)


async def test_per_recipient_limit_concurrent(tmp_path, sink):
    async with GatewayHarness(policy_config(tmp_path, sink.port, "recipient_hourly_limit = 3")) as gw:
        results = await asyncio.gather(*(transaction(gw, ["same@example.net"], body()) for _ in range(12)))
    assert sum(r.code == 250 for _, (r,), _ in results) == 3


async def test_counts_of_an_abandoned_transaction_are_given_back(tmp_path, sink):
    from rawsmtp import RawClient
    async with GatewayHarness(policy_config(tmp_path, sink.port, "daily_limit = 1")) as gw:
        client = await RawClient.connect(gw.host, gw.port)
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<app@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<a@example.net>")).code == 250
        assert (await client.cmd("RSET")).code == 250
        assert (await client.cmd("MAIL FROM:<app@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<b@example.net>")).code == 250      # refunded at RSET
        bad = await client.data(body(headers="X-SES-Trigger-Type: 7\r\n"))
        assert (bad.code, bad.enhanced) == (554, "5.6.0")                       # refunded at DATA
        assert (await client.cmd("MAIL FROM:<app@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<c@example.net>")).code == 250
        assert (await client.data(body())).code == 250
        assert (await client.cmd("MAIL FROM:<app@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<d@example.net>")).code == 451       # the one slot is used
        await client.close()


async def test_counts_are_given_back_on_disconnect_and_core_refusal(tmp_path, sink):
    """gateway_transaction_end: a dropped connection and a DATA the core refuses (NUL byte)
    release the counts taken at RCPT, so they do not use up the daily limit."""
    from rawsmtp import RawClient
    async with GatewayHarness(policy_config(tmp_path, sink.port, "daily_limit = 1")) as gw:
        client = await RawClient.connect(gw.host, gw.port)
        await client.ehlo()
        assert (await client.cmd("MAIL FROM:<app@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<a@example.net>")).code == 250
        await client.close()                                                   # gone without DATA
        client = await RawClient.connect(gw.host, gw.port)
        await client.ehlo()
        async with asyncio.timeout(5):
            while True:                                                        # the refund is a task
                assert (await client.cmd("MAIL FROM:<app@example.com>")).code == 250
                if (await client.cmd("RCPT TO:<b@example.net>")).code == 250:
                    break
                await client.cmd("RSET")
                await asyncio.sleep(0.05)
        refused = await client.data(body(text="nul \x00 byte"))
        assert (refused.code, refused.enhanced) == (554, "5.6.0")             # the core's cleanup refused it
        assert (await client.cmd("MAIL FROM:<app@example.com>")).code == 250
        assert (await client.cmd("RCPT TO:<c@example.net>")).code == 250
        assert (await client.data(body())).code == 250
        await client.close()


async def test_hard_bounce_blocklists_soft_bounce_does_not_and_entry_expires(tmp_path):
    fail = {"bad@example.net": "550 5.1.1 No such user", "busy@example.net": "450 4.2.0 Mailbox busy"}
    async with SinkServer(fail_rcpt=fail) as sink, GatewayHarness(policy_config(tmp_path, sink.port)) as gw:
        clock = Clock().install(gw)
        store = gw.gateway.store
        await transaction(gw, ["bad@example.net", "busy@example.net"], body())
        async with asyncio.timeout(10):
            while await suppression.blocklist_get(store, "bad@example.net") is None:
                await asyncio.sleep(0.05)
        assert await suppression.blocklist_get(store, "busy@example.net") is None
        _, (rcpt,), _ = await transaction(gw, ["BAD@example.net"], body())
        assert (rcpt.code, rcpt.enhanced) == (550, "5.1.1") and "FailedOperation.EmailAddrInBlacklist" in rcpt.text
        clock.advance(14 * 86400 - 60)
        _, (rcpt,), _ = await transaction(gw, ["bad@example.net"], body())
        assert rcpt.code == 550
        clock.advance(120)                                # past 14 days: no longer blocklisted
        _, (rcpt,), _ = await transaction(gw, ["bad@example.net"], body())
        assert rcpt.code == 250


async def test_unsubscribed_recipient_is_refused_for_that_sender_domain(tmp_path, sink):
    async with GatewayHarness(policy_config(tmp_path, sink.port)) as gw:
        await suppression.unsubscribe_add(gw.gateway.store, "example.com", "u@example.net", "test")
        _, rcpts, _ = await transaction(gw, ["u@example.net", "v@example.net"], body())
    assert (rcpts[0].code, rcpts[0].enhanced) == (550, "5.7.1")
    assert "FailedOperation.ReceiverHasUnsubscribed" in rcpts[0].text and rcpts[1].code == 250


async def test_eight_percent_blocklist_hits_pause_the_account_and_resume_works(tmp_path, sink):
    config = policy_config(tmp_path, sink.port, "pause_min_volume = 25")
    path = tmp_path / "gw.toml"
    path.write_text(config)
    async with GatewayHarness(config) as gw:
        store = gw.gateway.store
        for address in ("bl1@example.net", "bl2@example.net"):
            await suppression.blocklist_add(store, address, "550 5.1.1 test")
        _, rcpts, _ = await transaction(gw, [f"ok{i}@example.net" for i in range(23)] + ["bl1@example.net"], body())
        assert [r.code for r in rcpts] == [250] * 23 + [550]
        assert await suppression.account_paused(store, "app") is None        # 1 of 24: under volume and share
        mail, (rcpt,), _ = await transaction(gw, ["bl2@example.net"], body())
        assert mail.code == 250 and rcpt.code == 550                           # 2 of 25 = 8 %: pauses
        assert await suppression.account_paused(store, "app") is not None
        mail, _, _ = await transaction(gw, ["ok@example.net"], body())
        assert (mail.code, mail.enhanced) == (451, "4.7.1") and "FailedOperation.HighRejectionRate" in mail.text
        result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", "account", "resume", "app",
                                                          "-c", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "resumed" in result.stdout
        mail, (rcpt,), data = await transaction(gw, ["ok@example.net"], body())
        assert mail.code == 250 and rcpt.code == 250 and data.code == 250


async def test_send_rate_paces_deliveries_instead_of_refusing(tmp_path, sink):
    async with GatewayHarness(policy_config(tmp_path, sink.port, 'send_rate = "5/s"')) as gw:
        started = time.monotonic()
        _, rcpts, data = await transaction(gw, [f"p{i}@example.net" for i in range(12)], body())
        assert all(r.code == 250 for r in rcpts) and data.code == 250
        async with asyncio.timeout(15):
            while sum(len(m.recipients) for m in sink.messages) < 12:
                await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
    # 12 deliveries at 5 per 1-second window need at least three windows: two boundaries.
    assert elapsed >= 1.0


async def test_backlog_bound_refuses_new_mail_with_451(tmp_path):
    # Nothing listens on the smarthost port: deliveries defer and stay queued.
    async with GatewayHarness(policy_config(tmp_path, 1, "max_backlog = 3")) as gw:
        _, rcpts, data = await transaction(gw, ["a@example.net", "b@example.net", "c@example.net", "d@example.net"], body())
        assert [r.code for r in rcpts] == [250, 250, 250, 451]
        assert "RequestLimitExceeded" in rcpts[3].text and data.code == 250
        mail, _, _ = await transaction(gw, ["e@example.net"], body())
        assert (mail.code, mail.enhanced) == (451, "4.7.1") and "RequestLimitExceeded" in mail.text


async def test_policy_is_off_without_its_table(tmp_path, sink):
    from gateway.testing import make_config
    async with GatewayHarness(make_config(tmp_path, sink.port)) as gw:
        for _ in range(12):
            _, (rcpt,), _ = await transaction(gw, ["x@example.net"], body())
            assert rcpt.code == 250


class Capture:
    def __init__(self):
        self.meta = []

    @hookimpl
    def gateway_queued(self, queued):
        self.meta.append(dict(queued.meta))


async def test_header_contract_goes_to_meta_and_is_stripped(tmp_path, sink):
    capture = Capture()
    headers = ("X-SES-Trigger-Type: 1\r\nX-SES-Unsubscribe: 2\r\nX-SES-Tags: campaign=nov, variant=b\r\n"
               "X-SES-Callback-Custom: =?utf-8?b?5L2g5aW9LW9yZGVyLTQy?=\r\nX-SES-Configuration-Set: other\r\n")
    async with GatewayHarness(policy_config(tmp_path, sink.port), plugins=[("capture", capture)]) as gw:
        _, _, data = await transaction(gw, ["to@example.net"], body(headers=headers))
        assert data.code == 250
        await sink.wait_for(1)
    meta = capture.meta[0]
    assert meta["trigger_type"] == 1 and meta["unsubscribe"] == "2"
    assert meta["tags"] == {"campaign": "nov", "variant": "b"} and meta["callback_custom"] == "你好-order-42"
    assert b"x-ses-" not in sink.messages[0].data.lower()


@pytest.mark.parametrize("header,code", [
    ("X-SES-Trigger-Type: 2", "InvalidParameterValue: X-SES-Trigger-Type"),
    ("X-SES-Unsubscribe: 13", "InvalidParameterValue: X-SES-Unsubscribe"),
    ("X-SES-Tags: no pairs here", "InvalidParameterValue: X-SES-Tags"),
    ("X-SES-Template-Id: abc", "FailedOperation.InvalidTemplateID: X-SES-Template-Id"),
    ("X-SES-Template-Data: {}", "FailedOperation.InvalidTemplateID: X-SES-Template-Data"),
    ("X-SES-Trigger-Type: 1\r\nX-SES-Trigger-Type: 0", "X-SES-Trigger-Type must appear at most once"),
])
async def test_invalid_header_values_get_554_naming_the_header(tmp_path, sink, header, code):
    async with GatewayHarness(policy_config(tmp_path, sink.port)) as gw:
        _, _, data = await transaction(gw, ["to@example.net"], body(headers=header + "\r\n"))
    assert (data.code, data.enhanced) == (554, "5.6.0") and code in data.text


async def test_subject_over_998_characters_is_refused(tmp_path, sink):
    folded = "\r\n ".join(["word " * 20] * 10)           # 1000+ characters, folded lines
    async with GatewayHarness(policy_config(tmp_path, sink.port)) as gw:
        _, _, data = await transaction(gw, ["to@example.net"], body(subject=folded))
    assert (data.code, data.enhanced) == (554, "5.6.0") and "SubjectLengthError" in data.text


async def test_template_only_account(tmp_path, sink):
    async with GatewayHarness(policy_config(tmp_path, sink.port, "require_template = true")) as gw:
        _, _, data = await transaction(gw, ["to@example.net"], body())
    assert (data.code, data.enhanced) == (554, "5.6.0") and "FailedOperation.WithOutPermission" in data.text
