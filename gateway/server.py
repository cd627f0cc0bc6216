"""The gateway process: start-up, listeners, signals, and the shutdown runbook.

Shutdown (SIGTERM), in this order (uvicorn/aiohttp style; ``TimeoutStopSec`` in the unit
must exceed ``shutdown_grace`` twice over):

1. stop listening: no new connections;
2. idle sessions get ``421 4.3.2`` and are closed;
3. sessions in DATA get up to ``shutdown_grace`` to finish and commit (their 250 stands);
4. deliveries in flight get up to ``shutdown_grace``; the rest stay queued in the spool;
5. the ``gateway_shutdown`` hook runs, transports and the store close;
6. whatever is still running is cancelled and logged.

Under systemd (``Type=notify``, see systemd/ses-gateway.service) the process reports
``READY=1`` once listeners accept and the spool is recovered, ``STATUS=`` with the queue
depth, ``WATCHDOG=1`` from the event loop, ``RELOADING=1``/``READY=1`` around a SIGHUP
reload (:mod:`gateway.reload`) and ``STOPPING=1`` when the drain starts (:mod:`gateway.sdnotify`).
"""
from __future__ import annotations

import asyncio
import email.utils
import signal
import ssl
import time
from typing import Any, Callable

import structlog
from aiohttp import web

from gateway import plugins as plugin_registry
from gateway.config import Config, ConfigError, Listener
from gateway.dispatch import Dispatcher
from gateway.http import GATEWAY_KEY
from gateway.intake import Intake
from gateway.message import Message
from gateway.plugins import PluginManager, StartupError
from gateway.reload import Outcome
from gateway.scheduler import Scheduler, dsn_message
from gateway.sdnotify import Notifier
from gateway.session import Stash
from gateway.smtp import GatewaySMTP
from gateway.spool import QueuedMessage, Spool, SpoolError
from gateway.events import Event
from gateway.store.base import StatusUpdate, Store, open_store
from gateway.transports.base import AttemptResult, Transport

log = structlog.get_logger("gateway.server")


class Gateway:
    def __init__(self, config: Config, pm: PluginManager | None = None, *, load_entry_points: bool = True,
                 notifier: Notifier | None = None, worker: int = 0) -> None:
        self.config = config
        # Worker index (gateway.workers): its own spool directory; worker 0 alone runs the HTTP
        # listener and singletons such as the callback sender.
        self.worker = worker
        self.notifier = notifier or Notifier(None)
        self.pm = pm or plugin_registry.create(config.plugins_disabled, load_entry_points=load_entry_points)
        self.dispatch = Dispatcher(self.pm, gateway=self)
        self.stash = Stash()
        self.store: Store = open_store(config.state)
        self.spool = Spool(config.spool_dir, worker=worker, min_free_space=config.limits.min_free_space)
        self.scheduler = Scheduler(self)
        self.intake = Intake(self)
        self.transports: dict[str, Transport] = {}
        self.signer: Any = None
        self.servers: list[asyncio.AbstractServer] = []
        self.http_runner: web.AppRunner | None = None
        self.bound: list[tuple[str, int]] = []
        self.http_bound: tuple[str, int] | None = None
        self.stopping = False
        # Domains the gateway itself receives mail for (the unsubscribe mailto address at
        # its hostname): mail to them needs no AUTH and no sender-domain authorisation.
        self.local_domains: set[str] = set()
        self.ready = False
        self.started = time.time()
        # Per bound SMTP server: the Listener and TLS context new connections get (a reload
        # swaps them; running sessions keep theirs).
        self.listeners: list[Listener] = []
        self.tls_contexts: list[ssl.SSLContext | None] = []
        self.retired_transports: list[Transport] = []
        self.connections_total = 0
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload_error = ""
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Timing observers (name, seconds): the metrics plugin turns them into histograms.
        self.timing_observers: list[Callable[[str, float], None]] = []

    # -- start-up ------------------------------------------------------------------------------------------
    async def validate(self) -> None:
        self.signer = await self.check(self.config)

    async def check(self, config: Config) -> Any:
        """Validate ``config`` completely (accounts' plugin tables, plugin validators, DKIM
        keys); return its DKIM signer (or None). Raises ConfigError. Used at start and reload."""
        errors: list[str] = []
        plugin_names = {name for name, _ in self.pm.list_name_plugin()}
        for account in config.accounts.values():
            for key in account.settings:
                if key not in plugin_names:
                    errors.append(f"{config.path}: accounts.{account.name}.{key}: unknown key (no plugin named {key!r})")
        for result in await self.dispatch.collect("gateway_validate_config", config=config):
            errors.extend(result)
        if errors:
            raise ConfigError(errors[0])
        if config.dkim:
            from gateway.signing import load_keys

            return await asyncio.to_thread(load_keys, config)
        return None

    async def start(self) -> None:
        await self.validate()
        await self.store.open()
        try:
            self.spool.open()
        except SpoolError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"server.spool_dir: {self.config.spool_dir}: {exc.strerror}") from None
        recovered = await asyncio.to_thread(self.spool.recover)
        from gateway.transports.smtp import SmtpTransport

        self.transports["smtp"] = SmtpTransport(self.config.delivery, self.config.hostname)
        await self.dispatch.notify("gateway_startup", gateway=self)
        self.scheduler.start(recovered)
        loop = asyncio.get_running_loop()
        for index, listener in enumerate(self.config.listeners):
            context = tls_context(listener.tls_cert, listener.tls_key) if listener.tls_cert else None
            self.listeners.append(listener)
            self.tls_contexts.append(context)
            factory = self._protocol_factory(index)
            try:
                server = await loop.create_server(factory, listener.host, listener.port,
                                                  ssl=context if listener.mode == "smtps" else None,
                                                  ssl_handshake_timeout=self.config.limits.tls_handshake_timeout if listener.mode == "smtps" else None,
                                                  reuse_address=True, reuse_port=self.config.workers > 1,
                                                  backlog=1024)
            except OSError as exc:
                raise StartupError(f"listener {listener.address}: {exc.strerror}") from None
            self.servers.append(server)
            self.bound.append(server.sockets[0].getsockname()[:2])
        if self.config.http is not None and self.worker == 0:      # one HTTP listener per node
            await self._start_http()
        self.ready = True
        log.info("gateway started", listeners=[f"{h}:{p}" for h, p in self.bound], queued=self.scheduler.depth,
                 http=f"{self.http_bound[0]}:{self.http_bound[1]}" if self.http_bound else None)

    def _protocol_factory(self, index: int) -> Callable[[], GatewaySMTP]:
        # Read at accept time, not bind time: a reload changes what new sessions get.
        def factory() -> GatewaySMTP:
            self.connections_total += 1
            listener = self.listeners[index]
            return GatewaySMTP(self.intake, listener, self.config.limits, tls_context=self.tls_contexts[index],
                               implicit_tls=listener.mode == "smtps", hostname=self.config.hostname)

        return factory

    def status_text(self) -> str:
        text = f"{self.scheduler.depth} queued, {len(self.intake.sessions)} sessions"
        if self.last_reload_error:
            text += f"; last reload FAILED (running previous config): {self.last_reload_error}"
        return text[:400]

    # -- reload (SIGHUP) -------------------------------------------------------------------------------
    def apply_listeners(self, contexts: dict[int, ssl.SSLContext]) -> None:
        """Swap in the new config's listener settings for sockets bound at the same address."""
        for index, old in enumerate(self.listeners):
            new = self.config.listeners[index] if index < len(self.config.listeners) else None
            if new is None or new.address != old.address:
                continue                      # needs a restart (logged by gateway.reload)
            live = self.tls_contexts[index]
            if new.tls_cert and live is not None:
                # smtps contexts are held by the listening socket: load the new chain into it
                # (validated a moment ago in a fresh context; a file swapped since keeps the old one).
                try:
                    live.load_cert_chain(new.tls_cert, new.tls_key)
                except (OSError, ssl.SSLError) as exc:
                    log.error("reload: certificate not replaced", listener=new.address, error=str(exc))
            elif new.mode != "smtps":
                self.tls_contexts[index] = contexts.get(index)
            self.listeners[index] = new

    def replace_transport(self) -> None:
        from gateway.transports.smtp import SmtpTransport

        old = self.transports.get("smtp")
        self.transports["smtp"] = SmtpTransport(self.config.delivery, self.config.hostname)
        if old is not None:
            self.retired_transports.append(old)   # deliveries in flight finish on it

    def request_reload(self) -> None:
        """SIGHUP handler: run a reload task (reloads never overlap)."""
        if not self.ready or self.stopping:
            log.warning("reload ignored", reason="stopping" if self.stopping else "still starting")
            return
        task = asyncio.create_task(self.reload(), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> Outcome:
        from gateway import reload as reloader

        async with self._reload_lock:
            self.notifier.reloading()
            outcome = await reloader.reload(self)
            if outcome.ok:
                self.reloads["ok"] += 1
                self.last_reload_error = ""
            else:
                self.reloads["failed"] += 1
                self.last_reload_error = outcome.error
            self.notifier.ready(self.status_text())
            return outcome

    async def supervise(self) -> None:
        """Event-loop task: WATCHDOG=1 at half of WATCHDOG_USEC, STATUS= when it changes.

        Pinging from the loop itself means a loop blocked by a bug or a CPU-bound call
        misses the ping and systemd restarts the service (reliability.md §9, event-loop stall).
        """
        interval = self.notifier.watchdog_interval
        tick = min(interval, 5.0) if interval else 5.0
        last_status = ""
        next_ping = 0.0
        while not self.stopping:
            now = time.monotonic()
            if interval and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            status = self.status_text()
            if status != last_status:
                self.notifier.status(status)
                last_status = status
            await asyncio.sleep(tick)

    def observe(self, name: str, seconds: float) -> None:
        for observer in self.timing_observers:
            observer(name, seconds)

    async def _start_http(self) -> None:
        assert self.config.http is not None
        app = web.Application(client_max_size=1024 * 1024)
        app[GATEWAY_KEY] = self
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        for routes in await self.dispatch.collect("gateway_http_routes", gateway=self):
            app.router.add_routes(routes)
        self.http_runner = web.AppRunner(app, access_log=None)
        await self.http_runner.setup()
        site = web.TCPSite(self.http_runner, self.config.http.host, self.config.http.port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"http.address {self.config.http.address}: {exc.strerror}") from None
        server: Any = site._server          # aiohttp keeps the asyncio.Server here; port 0 needs it
        self.http_bound = server.sockets[0].getsockname()[:2]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        store_ok = await self.store.ping()
        self.observe("store_ping", time.perf_counter() - started)
        checks = {"listeners": self.ready and not self.stopping and all(s.is_serving() for s in self.servers),
                  "store": store_ok, "spool": self.spool.has_space() and await asyncio.to_thread(self._spool_writable)}
        body: dict[str, Any] = {"ready": all(checks.values()), "checks": checks, "queued": self.scheduler.depth,
                                "sessions": len(self.intake.sessions), "uptime": round(time.time() - self.started, 1)}
        if self.last_reload_error:
            body["last_reload_error"] = self.last_reload_error
        return web.json_response(body, status=200 if body["ready"] else 503)

    def _spool_writable(self) -> bool:
        import os

        return os.access(self.spool.tmp_dir, os.W_OK) and os.access(self.spool.queue_dir, os.W_OK)

    # -- state ------------------------------------------------------------------------------------------------
    async def record(self, updates: list[StatusUpdate], events: list[Event]) -> None:
        """Apply status-record updates and append events to the outbox in one store step, then
        tell ``gateway_event`` plugins. Every status change and event goes through here."""
        started = time.perf_counter()
        await self.store.record(updates, events)
        self.observe("store_record", time.perf_counter() - started)
        for event in events:
            await self.dispatch.notify("gateway_event", event=event)

    # -- delivery helpers -----------------------------------------------------------------------------------
    async def sign(self, message: Message, delivery: Any) -> bytes:
        """DKIM-sign the prepared copy for its header-From domain (always last, DESIGN §3)."""
        data = message.as_bytes()
        if self.signer is None:
            return data
        _, address = email.utils.parseaddr(message.get("from") or "")
        domain = address.rpartition("@")[2].lower()
        if not domain or not self.signer.can_sign(domain):
            return data
        started = time.perf_counter()
        signed: bytes = await asyncio.to_thread(self.signer.sign, data, domain)
        self.observe("dkim_sign", time.perf_counter() - started)
        return signed

    def dsn_wanted(self, sender: str) -> bool:
        from gateway.dsn import should_send_dsn

        return should_send_dsn(sender)

    async def send_dsn(self, message: QueuedMessage, failures: list[tuple[str, str]], data: bytes) -> None:
        from gateway.dsn import build_dsn

        original = Message.parse(data)
        headers = b"".join(raw for _, raw in original.fields)
        results = [(rcpt, AttemptResult.from_reply(int(err[:3]) if err[:3].isdigit() else 550, err[4:] if err[:3].isdigit() else err))
                   for rcpt, err in failures]
        dsn_bytes = build_dsn(reporting_mta=self.config.hostname, message_id=message.message_id, sender=message.sender,
                              failures=results, original_headers=headers, arrival_time=message.received,
                              postmaster=f"postmaster@{self.config.hostname}")
        dsn = dsn_message(self.config.node_id, message)
        try:
            await self.spool.commit(dsn, dsn_bytes)
        except SpoolError:
            log.error("DSN could not be spooled", message_id=message.message_id)
            return
        log.info("dsn queued", message_id=dsn.message_id, original=message.message_id, to=message.sender)
        await self.scheduler.accept(dsn, dsn_bytes, Message.parse(dsn_bytes))

    # -- shutdown ------------------------------------------------------------------------------------------------
    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        grace = self.config.shutdown_grace
        self.notifier.stopping(f"draining: {self.status_text()}")
        log.info("gateway stopping", sessions=len(self.intake.sessions), queued=self.scheduler.depth)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self.servers:                                  # 1
            server.close()
        for session in list(self.intake.sessions):                   # 2
            await session.shutdown_notice()
        deadline = time.monotonic() + grace                           # 3
        while any(s.in_data for s in self.intake.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.intake.sessions):
            session.close_connection()
        await self.scheduler.stop(grace)                              # 4
        await self.dispatch.notify("gateway_shutdown", gateway=self)  # 5
        for transport in [*self.transports.values(), *self.retired_transports]:
            await transport.close()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        for server in self.servers:
            await server.wait_closed()
        await self.store.close()
        self.spool.close()
        log.info("gateway stopped")


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert or "", key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"listener tls_cert/tls_key: cannot load: {exc}") from None
    return context


async def serve(config: Config, *, worker: int = 0, on_ready: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT (reload on SIGHUP); returns the exit status."""
    notifier = Notifier.from_env()
    gateway = Gateway(config, notifier=notifier, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Installed before start-up so an early SIGHUP is logged and ignored, not fatal.
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    try:
        try:
            await gateway.start()
        except BaseException:
            await gateway.stop()
            raise
        # Listeners accept and the spool is recovered: now systemd may start dependants.
        notifier.ready(gateway.status_text())
        if on_ready is not None:
            on_ready()
        supervisor = asyncio.create_task(gateway.supervise(), name="supervisor")
        await stop.wait()
        await gateway.stop()
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
    finally:
        notifier.close()
    return 0
