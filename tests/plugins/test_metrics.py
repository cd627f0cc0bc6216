"""metrics plugin: /metrics exposition from a real gateway, plugin families, per-Gateway registries."""
from __future__ import annotations

import asyncio

import aiohttp
import aiosmtplib
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from gateway import Reply, Verdict, hookimpl
from gateway.testing import GatewayHarness, make_config

HTTP = '[http]\naddress = "127.0.0.1:0"\npublic_url = "http://127.0.0.1"\nadmin_token = "t"\n'


class Contributor:
    """A plugin that refuses one recipient with an SES code and adds two families (one clashing)."""

    @hookimpl
    def gateway_rcpt(self, recipient):
        if recipient.startswith("blocked@"):
            return Reply(Verdict.DENY, 550, "5.1.1", "FailedOperation.EmailAddrInBlacklist recipient is blocklisted")
        return None

    @hookimpl
    async def gateway_metrics(self, gateway):
        ips = GaugeMetricFamily("sesgw_warmup_used", "Warm-up use per IP", labels=["ip"])
        ips.add_metric(["192.0.2.1"], 7)
        clash = GaugeMetricFamily("sesgw_queue_messages", "a duplicate name")
        clash.add_metric([], 999)
        return [ips, clash]


async def scrape(url: str) -> dict[str, list]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples, name, **labels):
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, (name, labels, samples)
    return found[0]


async def test_metrics_count_sessions_recipients_deliveries(tmp_path, sink, message):
    config = make_config(tmp_path, sink.port, extra=HTTP)
    async with GatewayHarness(config, plugins=[("contrib", Contributor())]) as gw:
        async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port) as client:
            await client.sendmail("app@example.com", ["to@example.net"], message)
            await client.sendmail("app@example.com", ["to2@example.net"], message)
            errors, _ = await client.sendmail("app@example.com", ["to3@example.net", "blocked@example.net"], message)
            assert "blocked@example.net" in errors
        await sink.wait_for(3)
        while gw.gateway.scheduler.messages:          # the last result is recorded just after the sink's 250
            await asyncio.sleep(0.01)
        m = await scrape(gw.http_url)
        assert value(m["sesgw_sessions"], "sesgw_sessions_total") == 1
        assert value(m["sesgw_transactions"], "sesgw_transactions_total", result="2xx") == 3
        assert value(m["sesgw_recipients"], "sesgw_recipients_total", result="accepted", code="250") == 4 - 1
        assert value(m["sesgw_recipients"], "sesgw_recipients_total", result="refused", code="550",
                     ses_code="FailedOperation.EmailAddrInBlacklist") == 1
        assert value(m["sesgw_deliveries"], "sesgw_deliveries_total", result="delivered", transport="smtp") == 3
        assert value(m["sesgw_delivery_latency_seconds"], "sesgw_delivery_latency_seconds_count", result="delivered") == 3
        assert value(m["sesgw_dkim_sign_seconds"], "sesgw_dkim_sign_seconds_count") == 3
        assert value(m["sesgw_store_seconds"], "sesgw_store_seconds_count", operation="record") >= 6
        assert value(m["sesgw_queue_recipients"], "sesgw_queue_recipients") == 0
        assert value(m["sesgw_queue_oldest_age_seconds"], "sesgw_queue_oldest_age_seconds") == 0
        assert value(m["sesgw_ready"], "sesgw_ready") == 1
        assert "sesgw_event_outbox_pending" in m and "process_cpu_seconds" in m
        # Plugin families are included; one whose name the core already uses is dropped.
        assert value(m["sesgw_warmup_used"], "sesgw_warmup_used", ip="192.0.2.1") == 7
        assert value(m["sesgw_queue_messages"], "sesgw_queue_messages") == 0


async def test_each_gateway_has_its_own_registry(tmp_path, sink, message):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with GatewayHarness(make_config(tmp_path / "a", sink.port, extra=HTTP)) as one, \
            GatewayHarness(make_config(tmp_path / "b", sink.port, extra=HTTP)) as two:
        async with aiosmtplib.SMTP(hostname=one.host, port=one.port) as client:
            await client.sendmail("app@example.com", ["to@example.net"], message)
        await sink.wait_for(1)
        assert value((await scrape(one.http_url))["sesgw_deliveries"], "sesgw_deliveries_total", result="delivered") == 1
        assert "sesgw_deliveries_total" not in {s.name for s in (await scrape(two.http_url)).get("sesgw_deliveries", [])}


async def test_readyz_reports_checks_and_queue(tmp_path, sink):
    async with GatewayHarness(make_config(tmp_path, sink.port, extra=HTTP)) as gw:
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.http_url + "/readyz") as response:
                body = await response.json()
                assert response.status == 200
            assert body["checks"] == {"listeners": True, "store": True, "spool": True}
            assert body["queued"] == 0
            async with http.get(gw.http_url + "/healthz") as response:
                assert response.status == 200
