"""Queue tools against a running gateway: list/show/hold/release/retry/delete/summary through
the admin API and the ``ses-gateway queue`` CLI (which calls the same API)."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import aiosmtplib
from proc import free_port

from gateway.cli import main
from gateway.testing import GatewayHarness, SinkServer, make_config

TOKEN = {"Authorization": "Bearer t"}


def http_section(port: int = 0) -> str:
    return f'[http]\naddress = "127.0.0.1:{port}"\npublic_url = "http://127.0.0.1"\nadmin_token = "t"\n'


async def send(gw, recipients, message) -> str:
    async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port) as client:
        _, reply = await client.sendmail("app@example.com", recipients, message)
    return reply.split("Ok ")[1].strip()


async def wait_deferred(gw, message_id: str) -> None:
    while not all(r.status == "deferred" for r in gw.gateway.scheduler.messages[message_id].recipients):
        await asyncio.sleep(0.02)


async def test_queue_api_hold_release_retry_delete(tmp_path, message):
    sink_port = free_port()                   # nothing listens: every attempt is deferred
    config = make_config(tmp_path, sink_port, extra=http_section(),
                         delivery=f'transport = "smarthost"\nsmarthost = "127.0.0.1:{sink_port}"\n'
                                  'smarthost_tls = "none"\nsmarthost_insecure = true\nretry_initial = "1h"\nconnect_timeout = "1s"\n')
    async with GatewayHarness(config) as gw, aiohttp.ClientSession(headers=TOKEN) as http:
        first = await send(gw, ["a@example.net", "b@example.org"], message)
        second = await send(gw, ["c@example.net"], message)
        await wait_deferred(gw, first)
        await wait_deferred(gw, second)
        base = gw.http_url + "/v1/queue"
        async with http.get(base, params={"domain": "example.org"}) as r:
            listing = await r.json()
        assert [m["id"] for m in listing["messages"]] == [first]
        async with http.get(base, params={"deferred": "1"}) as r:
            assert (await r.json())["total"] == 2
        async with http.get(f"{base}/{first}") as r:
            shown = await r.json()
        assert shown["sender"] == "app@example.com" and shown["meta"]["subject"] == "hello"
        assert {x["recipient"]: x["status"] for x in shown["recipients"]} == {"a@example.net": "deferred", "b@example.org": "deferred"}
        assert all(x["attempts"] == 1 and x["next_attempt"] and x["last_error"] for x in shown["recipients"])
        async with http.get(f"{base}/summary") as r:
            summary = await r.json()
        assert summary["recipients"] == 3
        assert summary["domains"][0] == {"domain": "example.net", "total": 2, "by_age": [2] + [0] * 9}

        # Hold: durable in the spool log, and a retry is refused until release.
        async with http.post(f"{base}/{first}/hold") as r:
            assert r.status == 200
        assert gw.gateway.scheduler.messages[first].held
        async with http.post(f"{base}/{first}/retry") as r:
            assert r.status == 409
        async with http.post(f"{base}/retry", params={"all": "1"}) as r:
            assert (await r.json())["ids"] == [second]
        async with http.post(f"{base}/{first}/release") as r:
            assert r.status == 200
        while gw.gateway.scheduler.messages[first].recipients[0].attempts < 2:   # release attempts now
            await asyncio.sleep(0.02)

        # Delete: a dropped event per pending recipient, spool files gone.
        path = gw.gateway.scheduler.messages[second].path
        async with http.delete(f"{base}/{second}", params={"reason": "operator cleanup"}) as r:
            assert (await r.json())["dropped"] == ["c@example.net"]
        assert second not in gw.gateway.scheduler.messages
        events = await gw.gateway.store.outbox(limit=100)
        dropped = [e for e in events if e.event.event == "dropped"]
        assert [(e.event.email, e.event.reason) for e in dropped] == [("c@example.net", "operator cleanup")]
        import os
        assert not os.path.exists(path)
        async with http.delete(f"{base}/{second}") as r:
            assert r.status == 404
        async with aiohttp.ClientSession() as anonymous, anonymous.get(base) as r:
            assert r.status == 401


async def test_queue_cli_talks_to_the_running_daemon(tmp_path, message, capsys):
    http_port = free_port()
    dead = free_port()
    config = make_config(tmp_path, dead, extra=http_section(http_port),
                         delivery=f'transport = "smarthost"\nsmarthost = "127.0.0.1:{dead}"\n'
                                  'smarthost_tls = "none"\nsmarthost_insecure = true\nretry_initial = "1h"\nconnect_timeout = "1s"\n')
    path = tmp_path / "gw.toml"
    path.write_text(config)
    async with GatewayHarness(config) as gw:
        message_id = await send(gw, ["a@example.net"], message)
        await wait_deferred(gw, message_id)

        async def cli(*argv: str) -> tuple[int, str]:
            code = await asyncio.to_thread(main, ["queue", "-c", str(path), *argv])
            return code, capsys.readouterr().out

        code, out = await cli("list")
        assert code == 0 and message_id in out and "a@example.net" in out and "app@example.com" in out
        code, out = await cli("list", "--domain", "nowhere.test")
        assert code == 0 and "Mail queue is empty" in out
        code, out = await cli("show", message_id)
        assert "a@example.net: deferred, 1 attempt(s), next attempt" in out and "last error:" in out
        code, out = await cli("summary")
        assert "example.net" in out and "TOTAL" in out
        assert (await cli("hold", message_id))[0] == 0
        code, out = await cli("--json", "list", "--held")
        assert [m["id"] for m in json.loads(out)["messages"]] == [message_id]
        assert (await cli("release", message_id))[0] == 0
        code, out = await cli("retry", "--domain", "example.net")
        assert code == 0 and "1 message(s)" in out
        code, out = await cli("delete", message_id)
        assert code == 0 and "1 recipient(s) dropped" in out
        assert (await cli("show", message_id))[0] == 1
    # Daemon gone: EX_UNAVAILABLE with one line on stderr.
    assert await asyncio.to_thread(main, ["queue", "-c", str(path), "list"]) == 69
    assert "cannot reach the gateway" in capsys.readouterr().err


async def test_queue_cli_needs_a_token(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text(make_config(tmp_path, 1))
    assert main(["queue", "-c", str(path), "list"]) == 78
    assert "[http]" in capsys.readouterr().err
