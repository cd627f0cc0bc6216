"""End to end: real clients → the real gateway → real aiosmtpd sinks, with status records,
events, retries, DSNs and MX routing through a local DNS server."""
from __future__ import annotations

import asyncio
import email
import smtplib
import subprocess

import aiosmtplib
import pytest
from conftest import MESSAGE
from proc import GatewayProcess, free_port

from gateway import hookimpl
from gateway.testing import DnsServer, GatewayHarness, SinkServer, make_config


class EventLog:
    def __init__(self):
        self.events = []

    @hookimpl
    def gateway_event(self, event):
        self.events.append(event)

    def names(self, recipient=None):
        return [e.event for e in self.events if recipient is None or e.email == recipient]


async def send(gw, message=MESSAGE, recipients=("to@example.net",), sender="app@example.com"):
    async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port) as client:
        errors, reply = await client.sendmail(sender, list(recipients), message)
    assert errors == {}
    return reply.split()[-1]            # "Ok <MessageId>" → MessageId


async def wait_until(predicate, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_smarthost_delivery_is_byte_correct_and_reports_message_id(tmp_path, sink):
    events = EventLog()
    async with GatewayHarness(make_config(tmp_path, sink.port), plugins=[("events", events)]) as gw:
        message_id = await send(gw)
        assert message_id.startswith("sesgw-gw-date-")
        await sink.wait_for(1)
        await wait_until(lambda: "delivered" in events.names())
        rows = await gw.gateway.store.query_status(message_id=message_id)
    # Byte-correct apart from the DKIM-Signature the gateway prepends (it had Message-ID and Date).
    data = sink.messages[0].data
    assert data.startswith(b"DKIM-Signature: ") and data.endswith(MESSAGE)
    assert data.count(b"DKIM-Signature: ") == 1 and len(data) - len(MESSAGE) < 600
    assert sink.messages[0].sender == "app@example.com"
    assert events.names() == ["processed", "delivered"]
    assert events.events[0].message_id == message_id and events.events[0].subject == "hello"
    assert [(r["ToEmailAddress"], r["DeliverStatus"]) for r in rows] == [("to@example.net", 1)]
    assert rows[0]["DeliverTime"] >= rows[0]["RequestTime"] > 0


async def test_each_recipient_is_its_own_delivery(tmp_path):
    async with SinkServer(fail_rcpt={"bad@example.net": "550 5.1.1 No such user"}) as sink:
        events = EventLog()
        async with GatewayHarness(make_config(tmp_path, sink.port), plugins=[("events", events)]) as gw:
            message_id = await send(gw, recipients=("a@example.net", "bad@example.net", "b@example.net"))
            await wait_until(lambda: len([e for e in events.events if e.event in ("delivered", "bounce")
                                          and e.message_id == message_id]) == 3)
            await sink.wait_for(3)               # two copies plus the DSN for the bounce
            rows = {r["ToEmailAddress"]: r for r in await gw.gateway.store.query_status(message_id=message_id)}
    assert rows["a@example.net"]["DeliverStatus"] == 1 and rows["b@example.net"]["DeliverStatus"] == 1
    assert rows["bad@example.net"]["DeliverStatus"] == 3
    assert "550 5.1.1" in rows["bad@example.net"]["DeliverMessage"]
    bounce = [e for e in events.events if e.event == "bounce"][0]
    assert bounce.email == "bad@example.net" and bounce.bounce_type == "hard_bounce"
    dsn = [m for m in sink.messages if m.sender == ""][0]
    assert dsn.recipients == ["app@example.com"]
    report = email.message_from_bytes(dsn.data)
    assert report.get_content_type() == "multipart/report"
    assert b"Final-Recipient: rfc822; bad@example.net" in dsn.data or b"Final-Recipient: rfc822;bad@example.net" in dsn.data
    assert b"Status: 5.1.1" in dsn.data


@pytest.mark.parametrize("fail", [{"RCPT": "450 4.2.0 Mailbox busy"}, {"DATA": "451 4.3.0 Try later"}, {"MAIL": "421 4.7.0 Go away"}])
async def test_temporary_failure_defers_then_retries(tmp_path, fail):
    async with SinkServer(fail=fail) as sink:
        events = EventLog()
        async with GatewayHarness(make_config(tmp_path, sink.port), plugins=[("events", events)]) as gw:
            message_id = await send(gw)
            await wait_until(lambda: events.names().count("deferred") >= 2)      # retried on the short schedule
            rows = await gw.gateway.store.query_status(message_id=message_id)
            assert rows[0]["DeliverStatus"] == 8
            sink.fail.clear()                                                    # the downstream recovers
            await sink.wait_for(1)
            await wait_until(lambda: "delivered" in events.names())
            rows = await gw.gateway.store.query_status(message_id=message_id)
    assert rows[0]["DeliverStatus"] == 1
    assert len(sink.messages) == 1


async def test_permanent_failure_bounces_with_dsn(tmp_path):
    async with SinkServer(fail_data={"to@example.net": "554 5.7.1 Rejected by content filter"}) as sink:
        events = EventLog()
        async with GatewayHarness(make_config(tmp_path, sink.port), plugins=[("events", events)]) as gw:
            await send(gw)
            await wait_until(lambda: "bounce" in events.names())
            await sink.wait_for(1)
    assert events.names("to@example.net") == ["processed", "bounce"]
    assert sink.messages[0].sender == "" and sink.messages[0].recipients == ["app@example.com"]
    assert b"Rejected by content filter" in sink.messages[0].data


async def test_no_bounce_for_a_bounce(tmp_path):
    async with SinkServer(fail={"RCPT": "550 5.1.1 No such user"}) as sink:
        events = EventLog()
        async with GatewayHarness(make_config(tmp_path, sink.port), plugins=[("events", events)]) as gw:
            await send(gw, sender="")
            await wait_until(lambda: "bounce" in events.names())
            await asyncio.sleep(0.3)
            assert gw.gateway.scheduler.depth == 0
    assert sink.messages == [] and events.names() == ["processed", "bounce"]


async def test_disconnect_after_data_is_retried(tmp_path):
    async with SinkServer(disconnect_after_data=True) as sink:
        events = EventLog()
        async with GatewayHarness(make_config(tmp_path, sink.port), plugins=[("events", events)]) as gw:
            await send(gw)
            await wait_until(lambda: "deferred" in events.names())
            sink.disconnect_after_data = False
            await sink.wait_for(1)
            await wait_until(lambda: "delivered" in events.names())
    assert sink.attempts >= 2


async def test_absent_downstream_defers_and_expires_with_dsn(tmp_path):
    port = free_port()
    events = EventLog()
    config = make_config(tmp_path, port, delivery=f'''
transport = "smarthost"
smarthost = "127.0.0.1:{port}"
smarthost_tls = "none"
smarthost_insecure = true
retry_initial = "100ms"
retry_max = "200ms"
max_lifetime = "1500ms"
connect_timeout = "1s"
''')
    async with GatewayHarness(config, plugins=[("events", events)]) as gw:
        await send(gw)
        await wait_until(lambda: "bounce" in events.names("to@example.net"), timeout=15)
        assert events.names("to@example.net").count("deferred") >= 2
        bounce = [e for e in events.events if e.event == "bounce"][0]
        assert bounce.bounce_type == "soft_bounce"
        # The DSN to app@example.com cannot be delivered either (same dead smarthost) and is
        # itself from <>: it expires without a bounce of its own.
        await wait_until(lambda: "bounce" in events.names("app@example.com"), timeout=15)
        await asyncio.sleep(0.3)
        assert gw.gateway.scheduler.depth == 0


async def test_mx_delivery_through_local_dns(tmp_path):
    async with SinkServer(host="127.0.0.2") as first, SinkServer(host="127.0.0.3", port=first.port) as second:
        zone = {
            "example.net": {"MX": ["10 mx1.example.net.", "20 mx2.example.net."]},
            "mx1.example.net": {"A": ["127.0.0.2"]},
            "mx2.example.net": {"A": ["127.0.0.3"]},
            "nullmx.example": {"MX": ["0 ."]},
        }
        async with DnsServer(zone) as dns:
            events = EventLog()
            config = make_config(tmp_path, delivery=f'''
transport = "mx"
mx_port = {first.port}
allow_local_mx = true
dns_nameservers = ["127.0.0.1:{dns.port}"]
retry_initial = "200ms"
''')
            async with GatewayHarness(config, plugins=[("events", events)]) as gw:
                await send(gw, recipients=("to@example.net", "x@nullmx.example"))
                await first.wait_for(1)
                await wait_until(lambda: "bounce" in events.names("x@nullmx.example"))
    assert first.messages[0].recipients == ["to@example.net"] and second.messages == []
    assert ("example.net", "MX") in dns.queries


def test_cli_subprocess_smtplib_and_swaks(tmp_path):
    """The gateway started from its CLI, fed by smtplib and by swaks."""
    async def main():
        async with SinkServer() as sink:
            port = free_port()
            config = tmp_path / "gw.toml"
            config.write_text(make_config(tmp_path, sink.port).replace("127.0.0.1:0", f"127.0.0.1:{port}"))
            with GatewayProcess(config, port):
                def client():
                    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                        reply = smtp.sendmail("app@example.com", ["to@example.net"], MESSAGE)
                        assert reply == {}
                    swaks = subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--from", "app@example.com",
                                            "--to", "other@example.net", "--header", "Subject: from swaks"],
                                           capture_output=True, text=True, timeout=30)
                    assert swaks.returncode == 0, swaks.stdout + swaks.stderr
                    assert "250 2.0.0 Ok sesgw-" in swaks.stdout
                await asyncio.to_thread(client)
                await sink.wait_for(2)
            subjects = sorted(email.message_from_bytes(m.data)["Subject"] for m in sink.messages)
            assert subjects == ["from swaks", "hello"]
    asyncio.run(main())
