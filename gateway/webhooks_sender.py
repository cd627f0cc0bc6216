"""The callback sender: posts due outbox events to their URLs (reliability.md §5).

The store's outbox is the truth: events enter it with the status change that caused them
(``Gateway.record``); this task only reads due ``pending`` rows and moves them to ``sent``
(2xx), back to ``pending`` with a later ``next_attempt`` (failure), ``failed`` (schedule
exhausted), ``disabled`` (410 Gone) or ``recorded`` (no URL). A crash at any point leaves
rows pending, so they are posted again after a restart: at-least-once, de-duplicated by the
receiver on ``webhook-id`` / ``id``.

Order: the events of one URL (and account) are posted one after another in outbox order,
so one message's events arrive in the order they happened unless a retry intervenes. When
a post fails, the URL's other due events are not tried in that round; they move with the
failed one (same next attempt, one more attempt counted), so a dead receiver costs one
request per round, not one per event, and order survives the outage.

Responses: 2xx done; 3xx failure (redirects are never followed); 410 disables the URL
(set ``callbacks:disabled``) until ``ses-gateway events enable-url``; 429 and 503 wait for
``Retry-After`` (seconds or HTTP date); anything else, connect (5 s) and total (15 s)
timeouts back off exponentially with jitter. At most 64 KB of a response body is read.
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import structlog
import yarl

from gateway import __version__
from gateway.store.base import OutboxItem, Store
from gateway.webhooks_payload import payload
from gateway.webhooks_settings import Options, Settings, Target, load
from gateway.webhooks_signing import sign_headers
from gateway.webhooks_ssrf import PINNED, GuardedResolver, resolve_checked

log = structlog.get_logger("gateway.callbacks")

DISABLED_KEY = "callbacks:disabled"
MAX_RESPONSE = 64 * 1024
PAGE = 500
SCAN_LIMIT = 20_000
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


@dataclass
class Stats:
    """In-process counters for ``gateway_metrics`` (per node, since start)."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    disabled: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_count: int = 0
    latency_sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.latency_count += 1
        self.latency_sum += seconds
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[index] += 1


@dataclass
class Outcome:
    ok: bool
    error: str = ""
    disable: bool = False
    retry_at: float | None = None      # from Retry-After


def retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3): delay-seconds or an HTTP date → a UNIX time."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return now + int(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(now, when.timestamp())


def batch_id(items: list[OutboxItem]) -> str:
    """A ``webhook-id`` for a batch: stable while its events stay the same (no ``.``)."""
    return "batch_" + hashlib.sha256(" ".join(i.event.id for i in items).encode()).hexdigest()[:24]


class Sender:
    def __init__(self, config_of: Callable[[], Any], store_of: Callable[[], Store], *,
                 now: Callable[[], float] = time.time) -> None:
        self.config_of = config_of
        self.store_of = store_of
        self.now = now
        self.wake = asyncio.Event()
        self.stats = Stats()
        self.busy: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self._settings: tuple[Any, Settings] | None = None
        # (MessageId, recipient) → (seq, next attempt) of an event waiting for a retry: later
        # events of that recipient wait behind it, so they arrive in order (memory only: after
        # a restart order is best effort, events carry their timestamp).
        self.blocked: dict[tuple[str, str], tuple[int, float]] = {}

    def settings(self) -> Settings:
        config = self.config_of()
        if self._settings is None or self._settings[0] is not config:
            self._settings = (config, load(config)[0])
        return self._settings[1]

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        # One session for every post; the resolver is the SSRF guard and the pin. No env
        # proxies (trust_env=False) and a fresh resolution per connection (no DNS cache).
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(lambda: self.settings().options.allow_private_callbacks),
                                         use_dns_cache=False, limit=100)
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                             headers={"User-Agent": f"ses-gateway/{__version__} (callbacks)"})
        self.task = asyncio.create_task(self._run(), name="callbacks-sender")

    async def stop(self, grace: float) -> None:
        self.stopping = True
        self.wake.set()
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=grace)
        pending = [t for t in [self.task, *self.busy.values()] if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()           # the row stays pending: posted again after the restart
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def notify(self) -> None:
        self.wake.set()

    async def _run(self) -> None:
        while not self.stopping:
            self.wake.clear()
            try:
                delay = await self.round()
            except Exception:
                log.exception("callback round failed")
                delay = self.settings().options.poll_interval
            if self.stopping:
                break
            try:
                async with asyncio.timeout(delay):
                    await self.wake.wait()
            except TimeoutError:
                pass
            await asyncio.sleep(0.01)      # coalesce a burst of new events into one round

    # -- one round: pick due events, start one worker per idle URL -------------------------------
    async def round(self) -> float:
        settings, store, now = self.settings(), self.store_of(), self.now()
        options = settings.options
        delay = options.poll_interval
        groups: dict[tuple[str, str], tuple[Target, list[OutboxItem]]] = {}
        recorded: list[OutboxItem] = []
        busy = set(self.busy)          # a URL that finishes mid-scan waits for the next round (order)
        after, scanned = 0, 0
        while scanned < SCAN_LIMIT:
            items = await store.outbox(state="pending", due_before=now, limit=PAGE, after_seq=after)
            for item in items:
                after = item.seq
                target = settings.target(item.event)
                block = self.blocked.get((item.event.message_id, item.event.email))
                if target is None:
                    recorded.append(item)
                elif block is not None and block[0] < item.seq and block[1] + 60 > now:
                    continue
                elif (target.url, target.account) not in busy:
                    groups.setdefault((target.url, target.account), (target, []))[1].append(item)
            scanned += len(items)
            if len(items) < PAGE:
                break
        await asyncio.gather(*(store.outbox_update(i.seq, state="recorded", attempts=i.attempts, next_attempt=0,
                                                   last_error="no callback URL") for i in recorded))
        for key, (target, items) in groups.items():
            if len(self.busy) >= options.concurrency:
                break
            if await store.set_get(DISABLED_KEY, target.url) is not None:
                await self._finish(items, "disabled", "URL disabled after 410 Gone")
                continue
            if options.batch_size > 1 and len(items) < options.batch_size and all(i.attempts == 0 for i in items):
                ready_at = min(i.event.timestamp for i in items) + options.batch_wait
                if ready_at > now:        # let the batch fill up to batch_wait
                    delay = min(delay, ready_at - now)
                    continue
            task = asyncio.create_task(self._deliver(target, items, options), name=f"callbacks {target.url}")
            self.busy[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return max(delay, 0.0)

    def _done(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self.busy.pop(key, None)
        self.wake.set()

    async def _deliver(self, target: Target, items: list[OutboxItem], options: Options) -> None:
        try:
            await self._deliver_items(target, items, options)
        except Exception:       # the rows stay pending; the next round tries again
            log.exception("callback delivery failed", url=target.url)

    async def _deliver_items(self, target: Target, items: list[OutboxItem], options: Options) -> None:
        size = options.batch_size
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        for index, chunk in enumerate(chunks):
            outcome = await self.post(target, chunk, options)
            if outcome.ok:
                self.stats.sent += len(chunk)
                await self._finish(chunk, "sent", "")
                continue
            rest = [item for later in chunks[index:] for item in later]
            await self._failed(target, rest, outcome, options, tried=len(chunk))
            return

    def _unblock(self, item: OutboxItem) -> None:
        key = (item.event.message_id, item.event.email)
        if self.blocked.get(key, (0, 0.0))[0] == item.seq:
            del self.blocked[key]

    async def _finish(self, items: list[OutboxItem], state: str, error: str) -> None:
        store = self.store_of()
        for item in items:
            self._unblock(item)
        await asyncio.gather(*(store.outbox_update(i.seq, state=state, attempts=i.attempts + (state == "sent"),
                                                   next_attempt=0, last_error=error) for i in items))

    async def _failed(self, target: Target, items: list[OutboxItem], outcome: Outcome, options: Options, *,
                      tried: int) -> None:
        store, now = self.store_of(), self.now()
        if outcome.disable:
            await store.set_add(DISABLED_KEY, target.url, data={"account": target.account, "since": int(now),
                                                                "reason": outcome.error})
            self.stats.disabled += 1
            log.warning("callback URL disabled", url=target.url, account=target.account, reason=outcome.error)
            await self._finish(items, "disabled", outcome.error)
            return
        head = items[0]
        next_attempt = outcome.retry_at if outcome.retry_at is not None else now + options.backoff(head.attempts + 1)
        next_attempt = min(next_attempt, now + options.retry_after_max)
        updates = []
        for position, item in enumerate(items):
            attempts = item.attempts + 1
            error = outcome.error if position < tried else f"not attempted: an earlier post to this URL failed: {outcome.error}"
            key = (item.event.message_id, item.event.email)
            if options.exhausted(attempts):
                self._unblock(item)
                self.stats.failed += 1
                updates.append(store.outbox_update(item.seq, state="failed", attempts=attempts, next_attempt=0,
                                                   last_error=error))
            else:
                if key not in self.blocked or self.blocked[key][0] >= item.seq:
                    self.blocked[key] = (item.seq, next_attempt)
                self.stats.retried += 1
                updates.append(store.outbox_update(item.seq, state="pending", attempts=attempts,
                                                   next_attempt=next_attempt, last_error=error))
        await asyncio.gather(*updates)
        log.info("callback failed", url=target.url, account=target.account, events=len(items),
                 attempts=head.attempts + 1, error=outcome.error, next_attempt=round(next_attempt))

    # -- one HTTP post ----------------------------------------------------------------------------------
    async def post(self, target: Target, chunk: list[OutboxItem], options: Options) -> Outcome:
        assert self.session is not None
        if len(chunk) == 1 and options.batch_size == 1:
            body_obj: Any = payload(chunk[0].event)
            msg_id = chunk[0].event.id
        else:
            body_obj = [payload(i.event) for i in chunk]
            msg_id = batch_id(chunk)
        body = json.dumps(body_obj, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {**sign_headers(list(target.keys), msg_id, body, int(self.now())), "Content-Type": "application/json"}
        url = yarl.URL(target.url)
        host, port = url.raw_host or "", url.port or 0
        started = time.monotonic()
        try:
            pins = await resolve_checked(host, port, allow_private=options.allow_private_callbacks)
            token = PINNED.set({host: pins})
            try:
                timeout = aiohttp.ClientTimeout(total=options.timeout, sock_connect=options.connect_timeout)
                async with self.session.post(url, data=body, headers=headers, allow_redirects=False,
                                             timeout=timeout) as response:
                    text = await _read_capped(response)
                    status, header = response.status, response.headers.get("Retry-After")
            finally:
                PINNED.reset(token)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__)
        self.stats.observe(time.monotonic() - started)
        if 200 <= status < 300:
            return Outcome(True)
        error = f"HTTP {status}: {text[:200]}".strip()
        if status == 410:
            return Outcome(False, error, disable=True)
        if 300 <= status < 400:
            return Outcome(False, f"HTTP {status}: redirects are not followed")
        if status in (429, 503):
            return Outcome(False, error, retry_at=retry_after(header, self.now()))
        return Outcome(False, error)


async def _read_capped(response: aiohttp.ClientResponse) -> str:
    """Read at most MAX_RESPONSE bytes of the body, then drop the connection (§8 row 63)."""
    data = bytearray()
    while len(data) < MAX_RESPONSE:
        chunk = await response.content.read(MAX_RESPONSE - len(data))
        if not chunk:
            return data.decode("utf-8", "replace")
        data += chunk
    response.close()
    return data.decode("utf-8", "replace")
