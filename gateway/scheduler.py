"""The scheduler: one delivery per recipient, each with its own status, retries and events.

Accepted messages arrive from the intake with their bytes (no re-read); recovered ones are
read from the spool. A delivery passes the gate hook (pacing, quotas, warm-up), is routed,
gets its per-recipient copy prepared by plugins, is DKIM-signed last by the core, and goes to
a transport. The result updates the spool's recipient log, the status record and the event
outbox, then the ``gateway_delivery_result`` hook. 4xx and timeouts retry with exponential
backoff and jitter; 5xx and expiry (``max_lifetime``, 72 h by default as SES) bounce, and a
bounced message gets an RFC 3464 DSN unless its sender is ``<>``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import random
import time
from typing import TYPE_CHECKING, Any

import structlog

from gateway import events as ev
from gateway.delivery import Delivery, Hold
from gateway.dispatch import HookFailed
from gateway.events import Event
from gateway.message import Message
from gateway.spool import QueuedMessage, RecipientState, new_message_id
from gateway.store.base import StatusUpdate
from gateway.transports.base import AttemptResult

if TYPE_CHECKING:
    from gateway.server import Gateway

log = structlog.get_logger("gateway.delivery")


class Scheduler:
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.messages: dict[str, QueuedMessage] = {}
        self.data_cache: dict[str, bytes] = {}
        self.ready: asyncio.Queue[Delivery] = asyncio.Queue()
        self.timers: list[tuple[float, int, Delivery]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.inflight: set[Delivery] = set()
        self.stopping = False
        self.stats: dict[str, int] = {"delivered": 0, "deferred": 0, "bounced": 0}

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, recovered: list[QueuedMessage]) -> None:
        now = time.time()
        for message in recovered:
            self.messages[message.message_id] = message
            for index, state in enumerate(message.recipients):
                if not state.final:
                    self._schedule(Delivery(message, index), max(state.next_attempt, now) if state.status == "deferred" else now)
        workers = self.gateway.config.delivery.max_connections
        self._tasks = [asyncio.create_task(self._worker(), name=f"delivery-{i}") for i in range(workers)]
        self._tasks.append(asyncio.create_task(self._timer(), name="delivery-timer"))
        if recovered:
            log.info("spool recovered", messages=len(recovered),
                     recipients=sum(1 for m in recovered for r in m.recipients if not r.final))

    async def stop(self, grace: float) -> None:
        """Stop taking deliveries; wait up to ``grace`` for those in flight, then cancel them.

        A cancelled delivery stays queued in the spool and is attempted again after restart.
        """
        self.stopping = True
        self._wake.set()
        deadline = time.monotonic() + grace
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def depth(self) -> int:
        return sum(1 for m in self.messages.values() for r in m.recipients if not r.final)

    def oldest(self) -> float | None:
        return min((m.received for m in self.messages.values()), default=None)

    # -- intake ---------------------------------------------------------------------------------------
    async def accept(self, message: QueuedMessage, data: bytes, parsed: Message | None = None) -> None:
        self.messages[message.message_id] = message
        self.data_cache[message.message_id] = data
        subject = (parsed.get_decoded("subject") if parsed else "") or ""
        message.meta.setdefault("subject", subject[:200])
        if parsed is not None:
            message.meta.setdefault("smtp_message_id", (parsed.get("message-id") or "").strip("<> "))
            message.meta.setdefault("from_header", parsed.get("from") or "")
        updates = [StatusUpdate(message.message_id, r.recipient, message.account,
                                {"RequestTime": message.received, "SendStatus": 0, "DeliverStatus": ev.DELIVER_QUEUED})
                   for r in message.recipients]
        events = [self._event("processed", Delivery(message, i)) for i in range(len(message.recipients))]
        await self._record(updates, events)
        for index in range(len(message.recipients)):
            self.ready.put_nowait(Delivery(message, index))

    # -- queue mechanics ----------------------------------------------------------------------------------
    def _schedule(self, delivery: Delivery, when: float) -> None:
        heapq.heappush(self.timers, (when, next(self._seq), delivery))
        self._wake.set()

    async def _timer(self) -> None:
        while not self.stopping:
            now = time.time()
            while self.timers and self.timers[0][0] <= now:
                _, _, delivery = heapq.heappop(self.timers)
                if not delivery.state.final and not delivery.message.held:
                    self.ready.put_nowait(delivery)
            delay = self.timers[0][0] - now if self.timers else 3600.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.001))
            except TimeoutError:
                pass

    async def _worker(self) -> None:
        while True:
            delivery = await self.ready.get()
            if self.stopping:
                return
            if delivery.state.final or delivery.message.held or delivery.message.message_id not in self.messages:
                continue
            if any(d.message is delivery.message and d.index == delivery.index for d in self.inflight):
                continue      # already being attempted (an operator retry raced the timer)
            self.inflight.add(delivery)
            try:
                await self.attempt(delivery)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Our fault: never lose the delivery; try again later.
                log.error("delivery attempt crashed", message_id=delivery.message_id, recipient=delivery.recipient, exc_info=True)
                await self.finish(delivery, AttemptResult.deferred("4.3.0", "internal error"))
            finally:
                self.inflight.discard(delivery)

    def retry_now(self, message_id: str) -> bool:
        message = self.messages.get(message_id)
        if message is None or message.held:
            return False
        busy = {d.index for d in self.inflight if d.message is message}
        for index, state in enumerate(message.recipients):
            if not state.final and index not in busy:
                self.ready.put_nowait(Delivery(message, index))
        return True

    # -- operator actions (queue tools: postsuper -h/-H/-d) --------------------------------------------
    def set_held(self, message_id: str, held: bool) -> bool:
        """Hold: no attempts until released (durable in the spool log). Release: attempt now."""
        message = self.messages.get(message_id)
        if message is None:
            return False
        if message.held != held:
            message.held = held
            self.gateway.spool.record_hold(message, held)
        if not held:
            self.retry_now(message_id)
        return True

    async def delete(self, message_id: str, reason: str) -> list[str] | None:
        """Drop a queued message: a ``dropped`` event per undelivered recipient, spool files removed.

        A delivery already in flight finishes (its result is not recorded): deleting never
        cancels a transaction half-way through DATA."""
        message = self.messages.pop(message_id, None)
        if message is None:
            return None
        self.data_cache.pop(message_id, None)
        dropped = []
        updates, events = [], []
        for index, state in enumerate(message.recipients):
            if state.final:
                continue
            delivery = Delivery(message, index)
            updates.append(StatusUpdate(message_id, state.recipient, message.account,
                                        {"DeliverStatus": ev.DELIVER_REJECTED, "DeliverMessage": reason[:500],
                                         "DeliverTime": int(time.time())}))
            events.append(dataclasses.replace(self._event("dropped", delivery), reason=reason))
            dropped.append(state.recipient)
        await self._record(updates, events)
        self.gateway.spool.remove(message)
        log.info("message deleted", message_id=message_id, recipients=len(dropped), reason=reason)
        return dropped

    # -- one attempt ------------------------------------------------------------------------------------------
    def backoff(self, attempts: int) -> float:
        config = self.gateway.config.delivery
        delay = min(config.retry_initial * (2 ** max(attempts - 1, 0)), config.retry_max)
        return delay * random.uniform(1 - config.retry_jitter, 1 + config.retry_jitter)

    async def attempt(self, delivery: Delivery) -> None:
        gateway = self.gateway
        config = gateway.config.delivery
        message = delivery.message
        if time.time() - message.received > config.max_lifetime:
            await self.finish(delivery, AttemptResult.bounced("4.4.7", "Message expired: delivery time exceeded", code=0), expired=True)
            return
        dispatch = gateway.dispatch
        try:
            hold = await dispatch.first("gateway_delivery_gate", delivery=delivery)
        except HookFailed:
            hold = Hold(time.time() + 60, "gate hook failed")
        if isinstance(hold, Hold):
            await self.hold(delivery, hold)
            return
        try:
            route = await dispatch.first("gateway_route", delivery=delivery)
            if route is None:
                raise HookFailed("gateway_route", "(none)")
            delivery.route = route
            delivery.source_address = await dispatch.first("gateway_source_address", delivery=delivery, route=route)
        except HookFailed as exc:
            await self.finish(delivery, AttemptResult.deferred("4.3.0", f"routing failed ({exc.plugin})"))
            return
        data = self.data_cache.get(message.message_id)
        if data is None:
            data = await asyncio.to_thread(gateway.spool.read_data, message)
            if sum(1 for r in message.recipients if not r.final) > 1:
                self.data_cache[message.message_id] = data
        if dispatch.has_impls("gateway_message_prepare") or gateway.signer is not None:
            copy = Message.parse(data)
            await dispatch.notify("gateway_message_prepare", delivery=delivery, message=copy)
            data = await gateway.sign(copy, delivery)
        transport = gateway.transports.get(route.transport)
        if transport is None:
            await self.finish(delivery, AttemptResult.deferred("4.3.5", f"transport {route.transport} is not available"))
            return
        result = await transport.send(route, source_address=delivery.source_address, sender=message.sender,
                                      recipient=delivery.recipient, data=data,
                                      smtputf8=bool(message.meta.get("smtputf8")), body_8bit=bool(message.meta.get("body_8bit")))
        await self.finish(delivery, result)

    async def hold(self, delivery: Delivery, hold: Hold) -> None:
        """Wait for a gate (pacing, warm-up): DeliverStatus 8 with the reason, no event, no attempt."""
        state = delivery.state
        if state.last_error != f"held: {hold.reason}":
            state.status, state.last_error, state.next_attempt = "deferred", f"held: {hold.reason}", hold.until
            await self._record([StatusUpdate(delivery.message_id, delivery.recipient, delivery.account,
                                             {"DeliverStatus": ev.DELIVER_DEFERRED, "DeliverMessage": f"held: {hold.reason}"})], [])
        self._schedule(delivery, hold.until)

    async def finish(self, delivery: Delivery, result: AttemptResult, *, expired: bool = False) -> None:
        message, state = delivery.message, delivery.state
        if message.message_id not in self.messages and not message.done:
            log.info("result for a deleted message ignored", message_id=message.message_id, recipient=delivery.recipient)
            return
        now = time.time()
        if not expired:
            state.attempts += 1
        status = result.status
        if status == "deferred" and now - message.received + self.backoff(state.attempts) > self.gateway.config.delivery.max_lifetime:
            # The next try would be past max_lifetime: bounce now with the last error (SES: 72 h).
            status, expired = "bounced", True
        state.last_error = result.describe()
        fields: dict[str, Any] = {"DeliverMessage": state.last_error[:500]}
        source = result.source_address or delivery.source_address
        if source:
            fields["SourceAddress"] = source          # the egress IP (warm-up pools), per attempt
        if status == "delivered":
            state.status, state.next_attempt = "delivered", 0.0
            fields.update(DeliverStatus=ev.DELIVER_DELIVERED, DeliverTime=int(now), SendStatus=0)
            event = self._event("delivered", delivery, result=result)
        elif status == "bounced":
            state.status, state.next_attempt = "bounced", 0.0
            fields.update(DeliverStatus=ev.DELIVER_REJECTED, DeliverTime=int(now))
            hard = result.enhanced.startswith("5.") and not expired
            event = self._event("bounce", delivery, result=result, bounce_type="hard_bounce" if hard else "soft_bounce")
        else:
            state.status = "deferred"
            state.next_attempt = now + self.backoff(state.attempts)
            fields.update(DeliverStatus=ev.DELIVER_DEFERRED)
            event = self._event("deferred", delivery, result=result)
        self.stats[state.status] = self.stats.get(state.status, 0) + 1
        log.info("delivery", message_id=message.message_id, recipient=delivery.recipient, result=state.status,
                 attempt=state.attempts, reply=state.last_error, remote=result.remote_host,
                 source=result.source_address or delivery.source_address,
                 next_attempt=round(state.next_attempt) if state.status == "deferred" else None)
        # The status record and the event go to the store in one step, then the spool log.
        await self._record([StatusUpdate(message.message_id, delivery.recipient, message.account, fields)], [event])
        self.gateway.spool.record(message, delivery.index)
        await self.gateway.dispatch.notify("gateway_delivery_result", delivery=delivery, result=result)
        if state.status == "deferred":
            self._schedule(delivery, state.next_attempt)
            self.data_cache.pop(message.message_id, None)
        elif message.done:
            await self._complete(message)

    async def _complete(self, message: QueuedMessage) -> None:
        # Several deliveries of one message can finish together; only the first completes it.
        if self.messages.pop(message.message_id, None) is None:
            return
        data = self.data_cache.pop(message.message_id, None)
        failures = [(r.recipient, r.last_error) for r in message.recipients if r.status == "bounced"]
        if failures and self.gateway.dsn_wanted(message.sender):
            if data is None:
                data = await asyncio.to_thread(self.gateway.spool.read_data, message)
            await self.gateway.send_dsn(message, failures, data)
        self.gateway.spool.remove(message)

    # -- events ------------------------------------------------------------------------------------------------
    def _event(self, name: str, delivery: Delivery, *, result: AttemptResult | None = None, bounce_type: str = "") -> Event:
        message = delivery.message
        meta = message.meta
        return Event(
            event=name, email=delivery.recipient, message_id=message.message_id, account=message.account,
            reason=result.describe() if result is not None and name != "delivered" else "",
            bounce_type=bounce_type, sender=message.sender, from_domain=message.sender.rpartition("@")[2],
            template_id=str(meta.get("template_id", "")), subject=str(meta.get("subject", "")),
            smtp_message_id=str(meta.get("smtp_message_id", "")),
            source_address=(result.source_address if result else "") or (delivery.source_address or ""),
            tags=dict(meta.get("tags", {})), custom=str(meta.get("callback_custom", "")),
        )

    async def _record(self, updates: list[StatusUpdate], events: list[Event]) -> None:
        await self.gateway.record(updates, events)


def dsn_message(reporting_mta: str, message: QueuedMessage) -> QueuedMessage:
    """The envelope of a DSN: from the null sender (never a bounce for a bounce), to the sender."""
    return QueuedMessage(
        message_id=new_message_id(reporting_mta.split(".")[0][:16] or "dsn"), account=None, sender="",
        recipients=[RecipientState(message.sender)], received=time.time(),
        meta={"dsn_for": message.message_id},
    )
