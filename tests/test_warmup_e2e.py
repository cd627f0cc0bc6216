"""Warm-up end to end: real gateway, real MX lookups against a local DNS server, a sink that
records each connection's peer address, loopback egress IPs (127.0.0.2, 127.0.0.3 are local
on Linux), and a controllable clock for the next hour and day."""
from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time

import aiohttp
import aiosmtplib
import pytest

from gateway import hookimpl
from gateway.testing import DnsServer, GatewayHarness, SinkServer, make_config
from gateway.warmup_budget import CLOCK

ZONE = {
    # Provider-like recipient domains: recognised by their MX host names, all served by the sink.
    "gmailish.test": {"MX": ["10 gmail-smtp-in.l.google.com."]},
    "gmail-smtp-in.l.google.com": {"A": ["127.0.0.1"]},
    "outlookish.test": {"MX": ["10 outlookish-test.mail.protection.outlook.com."]},
    "outlookish-test.mail.protection.outlook.com": {"A": ["127.0.0.1"]},
    "plain.test": {"MX": ["10 mx.plain.test."]},
    "mx.plain.test": {"A": ["127.0.0.1"]},
}
HTTP = '[http]\naddress = "127.0.0.1:0"\npublic_url = "http://127.0.0.1"\nadmin_token = "t"\n'


class Clock:
    def __init__(self) -> None:
        # Mid-day UTC so that "+1 hour" stays on the same date.
        today = dt.datetime.now(dt.timezone.utc).date()
        self.now = dt.datetime.combine(today, dt.time(10, 30), dt.timezone.utc).timestamp()

    def __call__(self) -> float:
        return self.now

    @property
    def date(self) -> str:
        return str(dt.datetime.fromtimestamp(self.now, dt.timezone.utc).date())


class TriggerType:
    """Stands in for the SES header parsing: X-SES-Trigger-Type → meta["trigger_type"]."""

    @hookimpl
    def gateway_data(self, transaction, message):
        value = message.get("X-SES-Trigger-Type")
        if value is not None:
            transaction.meta["trigger_type"] = int(value.strip())


def message(to: str, trigger: int = 0) -> bytes:
    return (f"From: App <app@example.com>\r\nTo: {to}\r\nSubject: hello\r\nX-SES-Trigger-Type: {trigger}\r\n"
            f"Message-ID: <{time.monotonic_ns()}@example.com>\r\n\r\nHello\r\n").encode()


async def send(gw, to: str, trigger: int = 0) -> str:
    async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port) as client:
        errors, reply = await client.sendmail("app@example.com", [to], message(to, trigger))
    assert errors == {}
    return reply.split()[-1]


async def wait_until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def config(tmp_path, sink_port: int, dns_port: int, warmup: str, *, extra: str = "") -> str:
    delivery = f'''
transport = "mx"
mx_port = {sink_port}
mx_tls = "none"
allow_local_mx = true
dns_nameservers = ["127.0.0.1:{dns_port}"]
retry_initial = "200ms"
retry_max = "1s"
connect_timeout = "2s"
'''
    return make_config(tmp_path, delivery=delivery, extra=extra + "[plugins.warmup]\nrecheck = \"100ms\"\n" + warmup)


def peers(sink: SinkServer) -> list[str]:
    return [m.peer[0] for m in sink.messages]


def by_recipient(sink: SinkServer) -> dict[str, str]:
    return {m.recipients[0]: m.peer[0] for m in sink.messages}


async def status_of(gw, recipient: str, wanted: int | None = None) -> dict:
    """The status record; with ``wanted``, once its DeliverStatus is that (results land after the sink)."""
    async with asyncio.timeout(10):
        while True:
            rows = await gw.gateway.store.query_status(recipient=recipient)
            if rows and (wanted is None or rows[0].get("DeliverStatus") == wanted and "SourceAddress" in rows[0]):
                return rows[0]
            await asyncio.sleep(0.02)


async def test_day_cap_hold_triggered_overflow_and_next_day(tmp_path):
    clock = Clock()
    warmup = f'''
[plugins.warmup.schedules.tiny]
daily = [3, 6]
[plugins.warmup.pools.default]
schedule = "tiny"
ips = [{{ ip = "127.0.0.2", start = {clock.date} }}, {{ ip = "127.0.0.3", warmed = true }}]
'''
    async with SinkServer() as sink, DnsServer(ZONE) as dns:
        async with GatewayHarness(config(tmp_path, sink.port, dns.port, warmup),
                                  plugins=[("trigger", TriggerType())]) as gw:
            gw.gateway.stash[CLOCK] = clock
            for i in range(3):
                await send(gw, f"a{i}@plain.test")
            await sink.wait_for(3)
            assert peers(sink) == ["127.0.0.2"] * 3          # day 1 of the warming IP: 3 mails

            # Day 1's cap is reached: batch mail waits with DeliverStatus 8 and a warm-up reason…
            await send(gw, "batch@plain.test")
            await wait_until(lambda: gw.gateway.scheduler.depth == 1)
            await asyncio.sleep(0.3)
            record = await status_of(gw, "batch@plain.test")
            assert record["DeliverStatus"] == 8 and "warm-up budget" in record["DeliverMessage"]
            assert "next day" in record["DeliverMessage"]
            assert len(sink.messages) == 3
            # …while triggered mail goes out on the warmed IP.
            await send(gw, "otp@plain.test", trigger=1)
            await sink.wait_for(4)
            assert by_recipient(sink)["otp@plain.test"] == "127.0.0.3"
            assert len(sink.messages) == 4

            # The next day the waiting mail flows from the warming IP (day 2: cap 6).
            clock.now += 86400
            await sink.wait_for(5)
            assert by_recipient(sink)["batch@plain.test"] == "127.0.0.2"
            record = await status_of(gw, "batch@plain.test", 1)
            assert record["SourceAddress"] == "127.0.0.2"
            for i in range(6):
                await send(gw, f"d2-{i}@plain.test")
            await sink.wait_for(10)
            await wait_until(lambda: gw.gateway.scheduler.depth == 1)
            await asyncio.sleep(0.3)
            day2 = [m.peer[0] for m in sink.messages[4:]]
            assert day2 == ["127.0.0.2"] * 6                  # exactly day 2's cap, the 7th waits
            assert gw.gateway.scheduler.depth == 1


async def test_provider_budgets_are_separate(tmp_path):
    clock = Clock()
    # Daily cap 4, each provider half of it (provider_share 0.5): 2 to gmail, 2 to microsoft.
    warmup = f'''
provider_share = 0.5
[plugins.warmup.schedules.tiny]
daily = [4]
[plugins.warmup.pools.default]
schedule = "tiny"
ips = [{{ ip = "127.0.0.2", start = {clock.date} }}]
'''
    async with SinkServer() as sink, DnsServer(ZONE) as dns:
        async with GatewayHarness(config(tmp_path, sink.port, dns.port, warmup, extra=HTTP)) as gw:
            gw.gateway.stash[CLOCK] = clock
            for i in range(3):
                await send(gw, f"g{i}@gmailish.test")
            await sink.wait_for(2)
            await asyncio.sleep(0.3)
            assert len(sink.messages) == 2                   # gmail's share is spent…
            held = [r for r in await gw.gateway.store.query_status() if r["DeliverStatus"] == 8]
            assert len(held) == 1 and "gmail" in held[0]["DeliverMessage"]
            for i in range(2):
                await send(gw, f"o{i}@outlookish.test")
            await sink.wait_for(4)                           # …microsoft's is not
            assert sorted(r for m in sink.messages for r in m.recipients)[-2:] == ["o0@outlookish.test", "o1@outlookish.test"]
            assert set(peers(sink)) == {"127.0.0.2"}

            async with aiohttp.ClientSession() as http:
                async with http.get(f"{gw.http_url}/v1/warmup", headers={"Authorization": "Bearer t"}) as response:
                    body = await response.json()
                async with http.get(f"{gw.http_url}/v1/warmup") as response:
                    assert response.status == 401
                async with http.get(f"{gw.http_url}/metrics") as response:
                    metrics = await response.text()
            assert 'sesgw_warmup_sent_today{ip="127.0.0.2",pool="default"} 4.0' in metrics
            assert 'sesgw_warmup_daily_cap{ip="127.0.0.2",pool="default"} 4.0' in metrics
            assert 'sesgw_warmup_provider_sent_today{ip="127.0.0.2",provider="gmail"} 2.0' in metrics
            row = body["ips"][0]
            assert row["ip"] == "127.0.0.2" and row["day"] == 1 and row["daily_cap"] == 4 and row["sent_today"] == 4
            assert row["providers"]["gmail"]["sent"] == 2 and row["providers"]["gmail"]["cap"] == 2
            assert row["providers"]["microsoft"]["sent"] == 2
            assert row["next_level"]["day"] == 2 and row["next_level"]["daily_cap"] is None   # then warm


async def test_throttling_pauses_one_ip_for_one_provider(tmp_path):
    clock = Clock()
    warmup = f'''
provider_share = 1.0
[plugins.warmup.pools.default]
ips = [{{ ip = "127.0.0.2", start = {clock.date} }}, {{ ip = "127.0.0.4", start = {clock.date} }}]
'''
    async with SinkServer() as sink, DnsServer(ZONE) as dns:
        async with GatewayHarness(config(tmp_path, sink.port, dns.port, warmup)) as gw:
            gw.gateway.stash[CLOCK] = clock
            # Gmail answers one delivery with a rate-limit reply.
            sink.fail_rcpt["slow@gmailish.test"] = "421 4.7.28 Our system has detected an unusual rate of mail"
            await send(gw, "slow@gmailish.test")
            await wait_until(lambda: gw.gateway.scheduler.stats["deferred"] >= 1)
            del sink.fail_rcpt["slow@gmailish.test"]
            store = gw.gateway.store
            paused = await store.set_members("warmup:paused")
            assert len(paused) == 1
            throttled_ip, provider = paused[0][0].split("|")
            assert provider == "gmail"
            other_ip = "127.0.0.4" if throttled_ip == "127.0.0.2" else "127.0.0.2"

            # Gmail traffic now avoids the throttled IP; Microsoft traffic still uses both.
            for i in range(6):
                await send(gw, f"g{i}@gmailish.test")
            for i in range(20):
                await send(gw, f"o{i}@outlookish.test")
            await sink.wait_for(27)
            routes = by_recipient(sink)
            assert {routes[f"g{i}@gmailish.test"] for i in range(6)} == {other_ip}
            assert routes["slow@gmailish.test"] == other_ip
            assert {routes[f"o{i}@outlookish.test"] for i in range(20)} == {"127.0.0.2", "127.0.0.4"}

            # After the backoff (10 minutes) the IP is back for gmail.
            clock.now += 601
            for i in range(20):
                await send(gw, f"h{i}@gmailish.test")
            await sink.wait_for(47)
            assert {by_recipient(sink)[f"h{i}@gmailish.test"] for i in range(20)} == {"127.0.0.2", "127.0.0.4"}


async def test_without_config_the_plugin_does_nothing(tmp_path):
    async with SinkServer() as sink, DnsServer(ZONE) as dns:
        cfg = config(tmp_path, sink.port, dns.port, "").replace('[plugins.warmup]\nrecheck = "100ms"\n', "")
        async with GatewayHarness(cfg) as gw:
            await send(gw, "x@plain.test")
            await sink.wait_for(1)
            assert peers(sink) == ["127.0.0.1"]
            assert await gw.gateway.store.set_members("warmup:paused") == []


def test_non_local_ip_is_refused_at_start(tmp_path):
    warmup = '''
[plugins.warmup.pools.default]
ips = [{ ip = "192.0.2.77", start = 2026-11-20 }]
'''
    path = tmp_path / "gw.toml"
    path.write_text(config(tmp_path, 2525, 53, warmup))
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "192.0.2.77 is not an address of this host" in result.stderr
    path.write_text(config(tmp_path, 2525, 53, warmup.replace("[plugins.warmup.pools", "check_local = false\n[plugins.warmup.pools")))
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


async def test_ipv6_source_only_for_ipv6_mx(tmp_path):
    """An IPv6 egress IP is never bound for an MX that has only IPv4 addresses."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    clock = Clock()
    warmup = f'''
[plugins.warmup.pools.default]
ips = [{{ ip = "::1", start = {clock.date} }}, {{ ip = "127.0.0.2", start = {clock.date} }}]
'''
    async with SinkServer() as sink, DnsServer(ZONE) as dns:
        async with GatewayHarness(config(tmp_path, sink.port, dns.port, warmup)) as gw:
            gw.gateway.stash[CLOCK] = clock
            for i in range(8):
                await send(gw, f"v{i}@plain.test")
            await sink.wait_for(8)
            assert set(peers(sink)) == {"127.0.0.2"}
