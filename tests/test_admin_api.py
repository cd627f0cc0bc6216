"""The admin HTTP API (issue 4): bearer token, JSON, SES parameter names and errors."""
from __future__ import annotations

import asyncio
import time

import aiohttp
from ses_testutil import AUTH, HTTP, body, policy_config, transaction

from gateway import suppression
from gateway.testing import GatewayHarness, make_config


async def test_status_endpoint(tmp_path, sink):
    today = time.strftime("%Y-%m-%d", time.gmtime())
    async with GatewayHarness(policy_config(tmp_path, sink.port, http=True)) as gw, aiohttp.ClientSession() as http:
        _, _, reply = await transaction(gw, ["a@example.net", "b@example.net"], body())
        message_id = reply.text.split()[-1]
        await sink.wait_for(1)
        url = f"{gw.http_url}/v1/status"
        async with http.get(url, params={"RequestDate": today}) as response:
            assert response.status == 401
        async with http.get(url, params={"RequestDate": today, "MessageId": message_id,
                                         "ToEmailAddress": "b@example.net"}, headers=AUTH) as response:
            assert response.status == 200
            records = (await response.json())["EmailStatusList"]
        assert [(r["MessageId"], r["ToEmailAddress"]) for r in records] == [(message_id, "b@example.net")]
        assert {"SendStatus", "DeliverStatus", "DeliverMessage", "RequestTime", "DeliverTime", "UserOpened",
                "UserClicked", "UserUnsubscribed", "UserComplained", "FromEmailAddress"} <= set(records[0])
        for params, status, code in [
            ({}, 400, "MissingParameter"),
            ({"RequestDate": "yesterday"}, 400, "InvalidParameterValue.WrongDate"),
            ({"RequestDate": "2001-01-01"}, 400, "FailedOperation.NotSupportDate"),
            ({"RequestDate": today, "Limit": "101"}, 400, "FailedOperation.InvalidLimit"),
            ({"RequestDate": today, "Limit": "x"}, 400, "InvalidParameterValue"),
            ({"RequestDate": today, "Offset": "-1"}, 400, "InvalidParameterValue"),
        ]:
            async with http.get(url, params=params, headers=AUTH) as response:
                assert response.status == status
                assert (await response.json())["error"]["code"] == code


async def test_blocklist_unsubscribes_and_accounts(tmp_path, sink):
    async with GatewayHarness(policy_config(tmp_path, sink.port, http=True)) as gw, aiohttp.ClientSession(headers=AUTH) as http:
        base = gw.http_url
        async with http.post(f"{base}/v1/blocklist", json={"EmailAddress": "b@example.net", "Reason": "550 5.1.1"}) as r:
            assert r.status == 200
        async with http.get(f"{base}/v1/blocklist", params={"EmailAddress": "b@"}) as r:
            data = await r.json()
        assert data["TotalCount"] == 1 and data["BlackList"][0]["EmailAddress"] == "b@example.net"
        async with http.delete(f"{base}/v1/blocklist", json={"EmailAddressList": ["b@example.net", "n@example.net"]}) as r:
            assert await r.json() == {"Removed": ["b@example.net"], "NotFound": ["n@example.net"]}
        async with http.delete(f"{base}/v1/blocklist", data=b"not json") as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "InvalidParameter"
        async with http.delete(f"{base}/v1/blocklist", json={"EmailAddressList": []}) as r:
            assert r.status == 400

        async with http.post(f"{base}/v1/unsubscribes", json={"Domain": "example.com", "EmailAddress": "u@example.net"}) as r:
            assert r.status == 200
        assert await suppression.unsubscribed(gw.gateway.store, "example.com", "u@example.net")
        async with http.get(f"{base}/v1/unsubscribes") as r:
            assert (await r.json())["Unsubscribes"][0]["EmailAddress"] == "u@example.net"
        async with http.post(f"{base}/v1/unsubscribes", json={"EmailAddress": "u@example.net"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "MissingParameter"
        async with http.delete(f"{base}/v1/unsubscribes", json={"Domain": "example.com", "EmailAddress": "u@example.net"}) as r:
            assert (await r.json())["Removed"] is True

        await transaction(gw, ["a@example.net", "c@example.net"], body())
        async with http.get(f"{base}/v1/accounts/app") as r:
            info = await r.json()
        assert info["Paused"] is False and info["Counters"]["SentToday"] == 2
        assert info["Limits"]["RecipientHourlyLimit"] == 10 and "Backlog" in info["Counters"]
        async with http.post(f"{base}/v1/accounts/app/pause") as r:
            assert (await r.json())["Paused"] is True
        assert (await transaction(gw, ["a@example.net"], body()))[0].code == 451
        async with http.post(f"{base}/v1/accounts/app/resume") as r:
            assert (await r.json())["Paused"] is False
        async with http.get(f"{base}/v1/accounts/nobody") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "ResourceNotFound"
        async with http.get(f"{base}/v1/accounts") as r:
            assert [a["Name"] for a in (await r.json())["Accounts"]] == ["app"]


async def test_openapi_is_public_and_lists_the_routes(tmp_path, sink):
    async with GatewayHarness(policy_config(tmp_path, sink.port, http=True)) as gw, aiohttp.ClientSession() as http:
        async with http.get(f"{gw.http_url}/v1/openapi.json") as r:
            assert r.status == 200
            document = await r.json()
    assert document["openapi"].startswith("3.1")
    for path in ("/v1/status", "/v1/blocklist", "/v1/unsubscribes", "/v1/accounts/{name}"):
        assert path in document["paths"]
    names = [p["name"] for p in document["paths"]["/v1/status"]["get"]["parameters"]]
    assert names == ["RequestDate", "MessageId", "ToEmailAddress", "Offset", "Limit"]


async def test_admin_routes_need_a_configured_token(tmp_path, sink):
    extra = HTTP.replace('admin_token = "t"\n', "")
    async with GatewayHarness(make_config(tmp_path, sink.port, extra=extra)) as gw, aiohttp.ClientSession() as http:
        async with http.get(f"{gw.http_url}/v1/blocklist", headers={"Authorization": "Bearer t"}) as r:
            assert r.status == 403
        async with http.get(f"{gw.http_url}/v1/accounts/app", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 403
    await asyncio.sleep(0)
