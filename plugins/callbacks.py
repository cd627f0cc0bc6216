"""callbacks: durable, signed, retried event webhooks (issue 5, DESIGN §4).

Every event (processed, deferred, delivered, dropped, bounce, open, click, spamreport,
unsubscribe) is already in the state store's outbox when ``gateway_event`` fires (the core
writes it with the status change). This plugin runs one sender task
(:mod:`gateway.webhooks_sender`) that posts due events, Tencent-shaped
(:mod:`gateway.webhooks_payload`) and signed the Standard Webhooks way
(:mod:`gateway.webhooks_signing`), to the sender address's or the account's URL, through
an SSRF guard (:mod:`gateway.webhooks_ssrf`).

Hooks:
- ``gateway_validate_config``: ``[plugins.callbacks]``, ``[accounts.NAME.callbacks]``, URL
  checks (literal and resolved addresses) — errors stop start-up with exit 78.
- ``gateway_startup`` / ``gateway_shutdown``: start and stop the sender (one aiohttp session).
- ``gateway_event``: wake the sender (it also polls every ``poll_interval``).
- ``gateway_metrics``: sent, failed, retrying, outbox depth, post latency.
- ``gateway_http_routes``: ``GET /v1/events``, ``POST /v1/events/{id}/replay``,
  ``POST /v1/events/enable-url`` (admin token).
Ordering: notification hooks only; no ordering needs.

Config (``[plugins.callbacks]``): allow_private_callbacks, retry_initial, retry_max,
retry_jitter, max_age, retry_after_max, connect_timeout, timeout, batch_size, batch_wait,
poll_interval, concurrency. Per account (``[accounts.NAME.callbacks]``): secret,
previous_secret, sender_urls. See the README (Event callbacks).
"""
from __future__ import annotations

import asyncio
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway import hookimpl
from gateway.http import admin, gateway_of, int_param, json_error, operation
from gateway.session import StashKey
from gateway.webhooks_ops import STATES, count_states, describe, enable_url, replay, scan
from gateway.webhooks_sender import LATENCY_BUCKETS, Sender
from gateway.webhooks_settings import load
from gateway.webhooks_ssrf import ForbiddenAddress, resolve_checked

SENDER = StashKey[Sender]()
CONFIG_RESOLVE_TIMEOUT = 2.0


@hookimpl
async def gateway_validate_config(config: Any) -> list[str] | None:
    settings, errors = load(config)
    if errors:
        return errors
    # Hostnames are resolved once here (and again at every attempt): a name that points
    # inside the network is a configuration error. A name that does not resolve yet is not.
    allow = settings.options.allow_private_callbacks
    for url in sorted(settings.urls()):
        host = urlsplit(url).hostname or ""
        if _is_literal(host):
            continue
        try:
            async with asyncio.timeout(CONFIG_RESOLVE_TIMEOUT):
                await resolve_checked(host, urlsplit(url).port or 0, allow_private=allow)
        except ForbiddenAddress as exc:
            errors.append(f"{config.path}: callback URL {url}: {exc}")
        except (OSError, TimeoutError):
            pass
    return errors or None


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@hookimpl
async def gateway_startup(gateway: Any) -> None:
    if getattr(gateway, "worker", 0) != 0:
        return          # several worker processes share one outbox: only worker 0 posts it
    sender = Sender(lambda: gateway.config, lambda: gateway.store)
    gateway.stash[SENDER] = sender
    await sender.start()


@hookimpl
async def gateway_shutdown(gateway: Any) -> None:
    if SENDER in gateway.stash:
        await gateway.stash[SENDER].stop(min(gateway.config.shutdown_grace, 5.0))


@hookimpl
def gateway_event(gateway: Any, event: Any) -> None:
    if SENDER in gateway.stash:
        gateway.stash[SENDER].notify()


@hookimpl
async def gateway_metrics(gateway: Any) -> list[Any] | None:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    if SENDER not in gateway.stash:
        return None
    stats = gateway.stash[SENDER].stats
    counts = await count_states(gateway.store)
    families: list[Any] = []
    for name, doc, value in (("sent", "Callback events posted with a 2xx answer", stats.sent),
                             ("failed", "Callback events given up after the retry schedule", stats.failed),
                             ("retries", "Failed callback attempts that will be retried", stats.retried),
                             ("disabled", "Callback URLs disabled after 410 Gone", stats.disabled)):
        family = CounterMetricFamily(f"sesgw_callbacks_{name}", doc)
        family.add_metric([], value)
        families.append(family)
    depth = GaugeMetricFamily("sesgw_callbacks_outbox", "Callback events in the outbox by state", labels=["state"])
    for state in ("pending", "failed", "disabled"):
        depth.add_metric([state], counts[state])
    families.append(depth)
    retrying = GaugeMetricFamily("sesgw_callbacks_retrying", "Pending callback events that failed at least once")
    retrying.add_metric([], counts["retrying"])
    families.append(retrying)
    # Stats keeps cumulative bucket counts already (le = "less or equal", Prometheus style).
    buckets = [(str(bound), count) for bound, count in zip(LATENCY_BUCKETS, stats.latency_buckets)]
    buckets.append(("+Inf", stats.latency_count))
    latency = HistogramMetricFamily("sesgw_callbacks_post_seconds", "Callback HTTP post latency",
                                    buckets=buckets, sum_value=stats.latency_sum)
    families.append(latency)
    return families


# -- admin API ---------------------------------------------------------------------------------------
@operation("GET", "/v1/events", summary="Callback events in the outbox and their delivery state",
           parameters=[{"name": "state", "in": "query", "schema": {"type": "string", "enum": list(STATES)}},
                       {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}}])
@admin
async def list_events(request: web.Request) -> web.StreamResponse:
    gateway = gateway_of(request)
    state = request.query.get("state")
    if state is not None and state not in STATES:
        return json_error(400, "InvalidParameterValue", f"state must be one of {', '.join(STATES)}")
    limit = int_param(request, "limit", 100, minimum=1, maximum=1000)
    after = int_param(request, "after", 0)
    items = await scan(gateway.store, state=state, limit=limit, after_seq=after)
    settings = load(gateway.config)[0]
    return web.json_response({"Events": [describe(i, settings) for i in items],
                              "Next": items[-1].seq if len(items) == limit else None})


@operation("POST", "/v1/events/{id}/replay", summary="Post one callback event again (id or seq; 'failed' = all failed)",
           parameters=[{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}])
@admin
async def replay_event(request: web.Request) -> web.StreamResponse:
    gateway = gateway_of(request)
    ident = request.match_info["id"]
    count = await (replay(gateway.store, failed=True) if ident == "failed" else replay(gateway.store, ident))
    if count == 0 and ident != "failed":
        return json_error(404, "ResourceNotFound", f"no event {ident}")
    gateway.stash[SENDER].notify()
    return web.json_response({"Replayed": count})


@operation("POST", "/v1/events/enable-url", summary="Re-enable a callback URL disabled after 410 Gone",
           parameters=[{"name": "url", "in": "query", "required": True,
                        "schema": {"type": "string", "description": "the URL or an account name"}}])
@admin
async def enable(request: web.Request) -> web.StreamResponse:
    gateway = gateway_of(request)
    name = request.query.get("url", "")
    if not name:
        return json_error(400, "MissingParameter", "url is required")
    urls, count = await enable_url(gateway.store, load(gateway.config)[0], name)
    gateway.stash[SENDER].notify()
    return web.json_response({"Enabled": urls, "Requeued": count})


@hookimpl
def gateway_http_routes(gateway: Any) -> list[Any]:
    return [web.get("/v1/events", list_events), web.post("/v1/events/enable-url", enable),
            web.post("/v1/events/{id}/replay", replay_event)]
