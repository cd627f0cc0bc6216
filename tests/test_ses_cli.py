"""The policy CLI as a subprocess against the live SQLite store: status (GetSendEmailStatus),
blocklist, unsubscribes, accounts (issue 4)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from ses_testutil import body, policy_config, transaction

from gateway import suppression
from gateway.testing import GatewayHarness


async def cli(config, *args):
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", *args, "-c", str(config)],
                                     capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout, result.stderr


async def test_status_queries_by_date_message_id_and_recipient(tmp_path, sink):
    config = tmp_path / "gw.toml"
    config.write_text(policy_config(tmp_path, sink.port))
    today = time.strftime("%Y-%m-%d", time.gmtime())
    async with GatewayHarness(config.read_text()) as gw:
        _, _, first = await transaction(gw, ["a@example.net", "b@example.net"], body())
        _, _, second = await transaction(gw, ["c@example.net"], body())
        first_id, second_id = first.text.split()[-1], second.text.split()[-1]
        await sink.wait_for(2)
        async with asyncio.timeout(10):
            while any(r["DeliverStatus"] != 1 for r in await gw.gateway.store.query_status(date=today)):
                await asyncio.sleep(0.05)
        code, out, err = await cli(config, "status", "--date", today, "--json")
        assert code == 0, err
        records = json.loads(out)["EmailStatusList"]
        assert {r["ToEmailAddress"] for r in records} == {"a@example.net", "b@example.net", "c@example.net"}
        assert all(r["DeliverStatus"] == 1 and r["SendStatus"] == 0 and r["FromEmailAddress"] == "app@example.com"
                   for r in records)
        code, out, _ = await cli(config, "status", "--date", today, "--message-id", first_id, "--json")
        assert sorted(r["ToEmailAddress"] for r in json.loads(out)["EmailStatusList"]) == ["a@example.net", "b@example.net"]
        code, out, _ = await cli(config, "status", "--date", today, "--to", "c@example.net")
        assert code == 0 and second_id in out and "ToEmailAddress" in out.splitlines()[0]
        code, out, _ = await cli(config, "status", "--date", today, "--limit", "1", "--offset", "1", "--json")
        assert len(json.loads(out)["EmailStatusList"]) == 1
        code, _, err = await cli(config, "status", "--date", today, "--limit", "101")
        assert code == 2 and "FailedOperation.InvalidLimit" in err
        code, _, err = await cli(config, "status", "--date", "26/11/2026")
        assert code == 2 and "InvalidParameterValue.WrongDate" in err
        code, out, _ = await cli(config, "status", "--date", today, "--to", "nobody@example.net")
        assert code == 1


async def test_blocklist_unsubscribes_and_account_commands(tmp_path, sink):
    config = tmp_path / "gw.toml"
    config.write_text(policy_config(tmp_path, sink.port))
    async with GatewayHarness(config.read_text()) as gw:
        store = gw.gateway.store
        code, out, err = await cli(config, "blocklist", "add", "Gone@example.net", "--reason", "550 5.1.1 no user")
        assert code == 0, err
        _, (rcpt,), _ = await transaction(gw, ["gone@example.net"], body())
        assert rcpt.code == 550
        code, out, _ = await cli(config, "blocklist", "list", "--json")
        entry = json.loads(out)["BlackList"][0]
        assert entry["EmailAddress"] == "gone@example.net" and entry["IspDesc"] == "550 5.1.1 no user"
        assert entry["ExpireTime"] > entry["BounceTime"]
        code, out, _ = await cli(config, "blocklist", "list", "--start", "2000-01-01", "--end", "2000-01-02", "--json")
        assert json.loads(out)["TotalCount"] == 0
        code, out, _ = await cli(config, "blocklist", "remove", "gone@example.net")
        assert code == 0 and await suppression.blocklist_get(store, "gone@example.net") is None
        _, (rcpt,), _ = await transaction(gw, ["gone@example.net"], body())
        assert rcpt.code == 250

        code, _, err = await cli(config, "unsubscribes", "add", "example.com", "u@example.net")
        assert code == 0, err
        _, (rcpt,), _ = await transaction(gw, ["u@example.net"], body())
        assert rcpt.code == 550 and "ReceiverHasUnsubscribed" in rcpt.text
        code, out, _ = await cli(config, "unsubscribes", "list", "--json")
        assert json.loads(out)["Unsubscribes"][0]["EmailAddress"] == "u@example.net"
        code, _, _ = await cli(config, "unsubscribes", "remove", "example.com", "u@example.net")
        assert code == 0 and not await suppression.unsubscribed(store, "example.com", "u@example.net")

        code, out, _ = await cli(config, "account", "pause", "app")
        assert code == 0
        mail, _, _ = await transaction(gw, ["x@example.net"], body())
        assert mail.code == 451
        code, out, _ = await cli(config, "account", "show", "app")
        info = json.loads(out)
        assert info["Paused"] is True and info["Limits"]["DailyLimit"] == 300000
        assert info["Counters"]["SentToday"] == 1
        code, out, _ = await cli(config, "account", "resume", "app")
        assert code == 0 and (await transaction(gw, ["x@example.net"], body()))[0].code == 250
        code, _, err = await cli(config, "account", "show", "nobody")
        assert code == 2 and "ResourceNotFound" in err
