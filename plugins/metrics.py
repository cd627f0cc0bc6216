"""metrics: Prometheus ``/metrics`` and the queue administration routes (issue 8).

Hooks:

- ``gateway_startup``: creates this gateway's ``CollectorRegistry`` (one per Gateway, never
  the process-global one: tests and embedders run several gateways in one process) and
  subscribes to the core's timings (DKIM signing, store calls);
- ``gateway_delivery_result``: counts deliveries by result and transport and observes the
  delivery latency (received → delivered/bounced);
- ``gateway_http_routes``: ``GET /metrics`` (text exposition, unauthenticated like
  ``/healthz``: keep the HTTP listener on a private address) and the ``/v1/queue`` admin
  routes of :mod:`gateway.queue_api`.

At scrape time the gauges are read from the running gateway (intake, scheduler, store) and
every ``gateway_metrics`` implementation adds its families (warm-up use per IP, webhook
state …). A plugin family whose name is already taken is dropped with a warning: Prometheus
rejects an exposition with a name twice.

No configuration keys. The metric list is in the README (Operating).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

from gateway import hookimpl
from gateway.http import gateway_of
from gateway.session import StashKey

if TYPE_CHECKING:
    from gateway.delivery import Delivery
    from gateway.server import Gateway
    from gateway.transports.base import AttemptResult

log = structlog.get_logger("gateway.metrics")

LATENCY_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
OUTBOX_SCAN_LIMIT = 100_000


class _Snapshot:
    """A collector that yields the families computed for the current scrape."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=False))
    snapshot: _Snapshot = field(default_factory=_Snapshot)
    warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        r = self.registry
        self.deliveries = Counter("sesgw_deliveries", "Delivery attempts by result and transport",
                                  ["result", "transport"], registry=r)
        self.latency = Histogram("sesgw_delivery_latency_seconds", "Time from acceptance to the final result",
                                 ["result"], buckets=LATENCY_BUCKETS, registry=r)
        self.dkim = Histogram("sesgw_dkim_sign_seconds", "DKIM signing time per message copy",
                              buckets=FAST_BUCKETS, registry=r)
        self.store = Histogram("sesgw_store_seconds", "State store call latency", ["operation"],
                               buckets=FAST_BUCKETS, registry=r)
        r.register(self.snapshot)
        ProcessCollector(registry=r)

    def observe(self, name: str, seconds: float) -> None:
        if name == "dkim_sign":
            self.dkim.observe(seconds)
        elif name.startswith("store_"):
            self.store.labels(name[6:]).observe(seconds)


METRICS = StashKey[Metrics]()


def metrics_of(gateway: "Gateway") -> Metrics:
    if METRICS not in gateway.stash:
        state = Metrics()
        gateway.stash[METRICS] = state
        gateway.timing_observers.append(state.observe)
    return gateway.stash[METRICS]


@hookimpl
def gateway_startup(gateway: "Gateway") -> None:
    metrics_of(gateway)


@hookimpl
def gateway_delivery_result(gateway: "Gateway", delivery: "Delivery", result: "AttemptResult") -> None:
    state = metrics_of(gateway)
    transport = delivery.route.transport if delivery.route is not None else "none"
    status = delivery.state.status
    state.deliveries.labels(status, transport).inc()
    if status in ("delivered", "bounced"):
        state.latency.labels(status).observe(max(time.time() - delivery.message.received, 0.0))


@hookimpl
def gateway_http_routes(gateway: "Gateway") -> list[web.RouteDef]:
    from gateway import queue_api

    return [web.get("/metrics", metrics_handler), *queue_api.routes()]


async def metrics_handler(request: web.Request) -> web.Response:
    gateway = gateway_of(request)
    state = metrics_of(gateway)
    families = await core_families(gateway)
    names = {f.name for f in families}
    for result in await gateway.dispatch.collect("gateway_metrics", gateway=gateway):
        for family in result or ():
            if family.name in names:
                if family.name not in state.warned:
                    log.warning("duplicate metric family dropped", name=family.name)
                    state.warned.add(family.name)
                continue
            names.add(family.name)
            families.append(family)
    # No await between setting the snapshot and rendering it: concurrent scrapes cannot mix.
    state.snapshot.families = families
    body = generate_latest(state.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


async def core_families(gateway: "Gateway") -> list[Metric]:
    intake, scheduler = gateway.intake, gateway.scheduler
    now = time.time()
    out: list[Metric] = [
        _gauge("sesgw_ready", "1 when listeners accept, store and spool are usable", float(gateway.ready and not gateway.stopping)),
        _gauge("sesgw_start_time_seconds", "Unix time the gateway started", gateway.started),
        _gauge("sesgw_sessions_open", "SMTP sessions open now", len(intake.sessions)),
    ]
    total = CounterMetricFamily("sesgw_sessions", "SMTP connections accepted", labels=[])
    total.add_metric([], gateway.connections_total)
    out.append(total)
    transactions = CounterMetricFamily("sesgw_transactions", "SMTP transactions by end-of-DATA reply class",
                                       labels=["result"])
    for cls in ("2xx", "4xx", "5xx"):
        transactions.add_metric([cls], intake.stats.get(f"transactions_{cls}", 0))
    out.append(transactions)
    recipients = CounterMetricFamily("sesgw_recipients", "RCPT TO outcomes by reply and SES error code",
                                     labels=["result", "code", "enhanced", "ses_code"])
    for (code, enhanced, ses_code), count in sorted(intake.rcpt_results.items()):
        recipients.add_metric(["accepted" if code < 400 else "refused", str(code), enhanced, ses_code], count)
    out.append(recipients)
    messages = list(scheduler.messages.values())
    oldest = scheduler.oldest()
    out += [
        _gauge("sesgw_queue_recipients", "Recipients waiting for delivery", scheduler.depth),
        _gauge("sesgw_queue_messages", "Messages in the queue", len(messages)),
        _gauge("sesgw_queue_held_messages", "Messages on hold", sum(1 for m in messages if m.held)),
        _gauge("sesgw_queue_deferred_recipients", "Recipients waiting for a retry",
               sum(1 for m in messages for r in m.recipients if r.status == "deferred")),
        _gauge("sesgw_queue_oldest_age_seconds", "Age of the oldest queued message", now - oldest if oldest else 0.0),
        _gauge("sesgw_deliveries_in_flight", "Delivery attempts running now", len(scheduler.inflight)),
    ]
    reloads = CounterMetricFamily("sesgw_config_reloads", "Configuration reloads (SIGHUP) by result", labels=["result"])
    for result, count in gateway.reloads.items():
        reloads.add_metric([result], count)
    out.append(reloads)
    out.append(_gauge("sesgw_config_last_reload_failed", "1 when the last reload was rejected", float(bool(gateway.last_reload_error))))
    started = time.perf_counter()
    pending = await gateway.store.outbox(state="pending", limit=OUTBOX_SCAN_LIMIT)
    gateway.observe("store_outbox", time.perf_counter() - started)
    out.append(_gauge("sesgw_event_outbox_pending", "Events waiting in the store outbox (webhooks)", len(pending)))
    try:
        stat = os.statvfs(gateway.spool.root)
        out.append(_gauge("sesgw_spool_free_bytes", "Free space on the spool file system", stat.f_bavail * stat.f_frsize))
    except OSError:
        pass
    return out
