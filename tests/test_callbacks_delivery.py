"""Callbacks end to end: a real gateway posts its events to a real aiohttp receiver that
verifies signatures (with the docs snippet) and fails on command (issue 5)."""
from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import time

import aiohttp
import aiosmtplib
import pytest
from callbacks_receiver import Answer, Receiver, tencent_sample_handler
from conftest import MESSAGE

from gateway.config import ConfigError, parse
from gateway.testing import GatewayHarness, SinkServer, make_config
from gateway.webhooks_signing import generate_secret

SECRET = generate_secret()
HTTP = '[http]\naddress = "127.0.0.1:0"\npublic_url = "http://127.0.0.1"\nadmin_token = "t"\n'
AUTH = {"Authorization": "Bearer t"}


def config_text(tmp_path, sink_port: int, url: str, *, plugin: str = "", allow_private: bool = True) -> str:
    accounts = f'callback_url = "{url}"\n[accounts.app.callbacks]\nsecret = "{SECRET}"\n'
    extra = (HTTP + "[plugins.callbacks]\n" + f"allow_private_callbacks = {'true' if allow_private else 'false'}\n"
             'retry_initial = "50ms"\nretry_max = "200ms"\nretry_jitter = 0\npoll_interval = "50ms"\n'
             'timeout = "1s"\nconnect_timeout = "500ms"\n' + plugin)
    return make_config(tmp_path, sink_port, accounts=accounts, extra=extra)


async def send(gw: GatewayHarness, count: int = 1) -> None:
    async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port) as smtp:
        for _ in range(count):
            await smtp.sendmail("app@example.com", ["to@example.net"], MESSAGE)


async def events_api(gw: GatewayHarness, state: str) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.http_url}/v1/events", params={"state": state}, headers=AUTH) as response:
            assert response.status == 200
            return list((await response.json())["Events"])


async def test_events_arrive_once_each_signed_in_order(tmp_path, sink) -> None:
    async with Receiver(SECRET) as receiver, GatewayHarness(config_text(tmp_path, sink.port, receiver.url)) as gw:
        await send(gw, 3)
        await receiver.wait_for(lambda: len(receiver.hits) >= 6)
        await asyncio.sleep(0.3)                       # nothing more may come
        assert len(receiver.hits) == 6
        assert all(hit.verified for hit in receiver.hits)
        ids = [hit.headers["webhook-id"] for hit in receiver.hits]
        assert len(set(ids)) == 6 and ids == [hit.json["id"] for hit in receiver.hits]
        by_message = collections.defaultdict(list)
        for hit in receiver.hits:
            record = tencent_sample_handler(hit.body)         # a Tencent receiver reads it unchanged
            assert record["username"] == "app" and record["messageId"] == "m1@example.com"
            by_message[record["bulkId"]].append((record["event"], record["eventid"]))
        assert len(by_message) == 3
        assert all(events == [("processed", 0), ("delivered", 1)] for events in by_message.values())
        assert len(await events_api(gw, "sent")) == 6 and await events_api(gw, "pending") == []
        assert gw.gateway is not None
        families = {f.name: f for fams in await gw.gateway.dispatch.collect("gateway_metrics") if fams for f in fams}
        assert families["sesgw_callbacks_sent"].samples[0].value == 6
        assert {s.labels["state"]: s.value for s in families["sesgw_callbacks_outbox"].samples}["pending"] == 0
        latency = {s.name: s.value for s in families["sesgw_callbacks_post_seconds"].samples if not s.labels.get("le")}
        assert latency["sesgw_callbacks_post_seconds_count"] == 6


async def test_fails_three_times_then_delivered_on_the_fourth(tmp_path, sink) -> None:
    async with Receiver(SECRET) as receiver, GatewayHarness(config_text(tmp_path, sink.port, receiver.url)) as gw:
        receiver.answers = [Answer(500, body=b"boom"), Answer(502), Answer(200, delay=2.0)]   # the last one times out
        await send(gw)
        await receiver.wait_for(lambda: len(receiver.hits) >= 5)
        await asyncio.sleep(0.3)
        events = [hit.json["event"] for hit in receiver.hits]
        # The delivered event waits behind the failing processed one: order is kept.
        assert events == ["processed"] * 4 + ["delivered"]
        assert len({hit.headers["webhook-id"] for hit in receiver.hits[:4]}) == 1
        assert all(hit.verified for hit in receiver.hits)
        gaps = [b.at - a.at for a, b in zip(receiver.hits, receiver.hits[1:4])]
        assert gaps[0] >= 0.04 and gaps[1] >= 0.09              # 50 ms, then 100 ms
        sent = {row["Event"]: row for row in await events_api(gw, "sent")}
        assert sent["processed"]["Attempts"] == 4 and set(sent) == {"processed", "delivered"}
        assert sent["processed"]["LastError"] == ""


async def test_410_disables_the_url_until_enabled(tmp_path, sink) -> None:
    async with Receiver(SECRET) as receiver, GatewayHarness(config_text(tmp_path, sink.port, receiver.url)) as gw:
        receiver.default = Answer(410)
        await send(gw)
        await receiver.wait_for(lambda: len(receiver.hits) >= 1)
        async with asyncio.timeout(5):
            while len(await events_api(gw, "disabled")) < 2:
                await asyncio.sleep(0.05)
        await send(gw)                                  # new events for a disabled URL are not posted
        async with asyncio.timeout(5):
            while len(await events_api(gw, "disabled")) < 4:
                await asyncio.sleep(0.05)
        assert len(receiver.hits) == 1
        receiver.default = Answer(200)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.http_url}/v1/events/enable-url", params={"url": "app"}, headers=AUTH) as response:
                assert await response.json() == {"Enabled": [receiver.url], "Requeued": 4}
        await receiver.wait_for(lambda: len(receiver.hits) >= 5)
        assert sorted(hit.json["event"] for hit in receiver.hits[1:]) == ["delivered", "delivered", "processed", "processed"]


async def test_retry_after_is_respected(tmp_path, sink) -> None:
    async with Receiver(SECRET) as receiver, GatewayHarness(config_text(tmp_path, sink.port, receiver.url)) as gw:
        receiver.answers = [Answer(429, {"Retry-After": "1"}), Answer(503, {"Retry-After": "1"})]
        await send(gw)
        await receiver.wait_for(lambda: len(receiver.hits) >= 4)
        first, second, third = receiver.hits[:3]
        assert second.at - first.at >= 0.9 and third.at - second.at >= 0.9     # not the 50 ms schedule
        assert first.headers["webhook-id"] == third.headers["webhook-id"]


async def test_batching_posts_arrays(tmp_path, sink) -> None:
    text = config_text(tmp_path, sink.port, "", plugin='batch_size = 10\nbatch_wait = "400ms"\n')
    async with Receiver(SECRET) as receiver:
        text = text.replace('callback_url = ""', f'callback_url = "{receiver.url}"')
        async with GatewayHarness(text) as gw:
            await send(gw, 4)
            await receiver.wait_for(lambda: len(receiver.events()) >= 8)
            assert len(receiver.hits) < 8
            assert all(isinstance(hit.json, list) and hit.verified for hit in receiver.hits)
            assert all(hit.headers["webhook-id"].startswith("batch_") for hit in receiver.hits)
            assert len({event["id"] for event in receiver.events()}) == 8


async def test_huge_response_body_is_capped(tmp_path, sink) -> None:
    async with Receiver(SECRET) as receiver, GatewayHarness(config_text(tmp_path, sink.port, receiver.url)) as gw:
        receiver.answers = [Answer(200, huge=True)]
        started = time.monotonic()
        await send(gw)
        await receiver.wait_for(lambda: len(receiver.hits) >= 2)
        assert time.monotonic() - started < 5
        async with asyncio.timeout(5):
            while len(await events_api(gw, "sent")) < 2:
                await asyncio.sleep(0.05)


async def test_ssrf_refused_at_load_and_at_every_attempt(tmp_path, sink) -> None:
    async with Receiver(SECRET) as receiver:
        with pytest.raises(ConfigError, match="loopback"):
            async with GatewayHarness(config_text(tmp_path, sink.port, receiver.url, allow_private=False)):
                pass
        async with GatewayHarness(config_text(tmp_path, sink.port, receiver.url)) as gw:
            # As if the operator reloaded with the guard on (or DNS now points inside):
            # each attempt checks again, so nothing reaches the receiver.
            assert gw.gateway is not None
            gw.gateway.config = parse(config_text(tmp_path, sink.port, receiver.url, allow_private=False), path="t.toml", env={})
            await send(gw)
            async with asyncio.timeout(5):
                while not (rows := await events_api(gw, "pending")) or not all(r["Attempts"] for r in rows):
                    await asyncio.sleep(0.05)
            assert "loopback" in rows[0]["LastError"] and receiver.hits == []


async def test_no_url_means_recorded_and_cli_replays_failed(tmp_path, sink) -> None:
    async with Receiver(SECRET) as receiver:
        text = config_text(tmp_path, sink.port, receiver.url, plugin='max_age = "100ms"\n')
        path = tmp_path / "gw.toml"
        path.write_text(text)
        receiver.default = Answer(500)
        async with GatewayHarness(text) as gw:
            await send(gw)
            async with asyncio.timeout(5):
                while len(await events_api(gw, "failed")) < 2:
                    await asyncio.sleep(0.05)

            def cli(*args: str) -> str:
                done = subprocess.run([sys.executable, "-m", "gateway", "events", *args, "-c", str(path)],
                                      capture_output=True, text=True, timeout=30)
                assert done.returncode == 0, done.stderr
                return done.stdout

            listing = await asyncio.to_thread(cli, "list", "--failed")
            assert listing.count("failed") >= 2 and "HTTP 500" in listing
            receiver.default = Answer(200)
            assert "2 event(s) queued" in await asyncio.to_thread(cli, "replay", "--failed")
            async with asyncio.timeout(5):
                while len(await events_api(gw, "sent")) < 2:
                    await asyncio.sleep(0.05)
    plain = make_config(tmp_path / "plain", sink.port, extra=HTTP)
    async with GatewayHarness(plain) as gw:
        await send(gw)
        async with asyncio.timeout(5):
            while len(await events_api(gw, "recorded")) < 2:
                await asyncio.sleep(0.05)


async def test_later_event_waits_for_earlier_retry_of_same_recipient(tmp_path) -> None:
    # processed fails (retry in 1 s); delivered is recorded meanwhile and is due at once,
    # but must not overtake processed for the same message and recipient.
    async with SinkServer(delay=0.2) as slow_sink, Receiver(SECRET) as receiver:
        async with GatewayHarness(config_text(tmp_path, slow_sink.port, receiver.url)) as gw:
            receiver.answers = [Answer(503, {"Retry-After": "1"})]
            await send(gw)
            await receiver.wait_for(lambda: len(receiver.hits) >= 3)
            assert [hit.json["event"] for hit in receiver.hits] == ["processed", "processed", "delivered"]
