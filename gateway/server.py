"""The gateway process: start-up, listeners, signals, and the shutdown runbook.

Shutdown (SIGTERM), in this order (uvicorn/aiohttp style; ``TimeoutStopSec`` in the unit
must exceed ``shutdown_grace`` twice over):

1. stop listening: no new connections;
2. idle sessions get ``421 4.3.2`` and are closed;
3. sessions in DATA get up to ``shutdown_grace`` to finish and commit (their 250 stands);
4. deliveries in flight get up to ``shutdown_grace``; the rest stay queued in the spool;
5. the ``gateway_shutdown`` hook runs, transports and the store close;
6. whatever is still running is cancelled and logged.
"""
from __future__ import annotations

import asyncio
import email.utils
import signal
import ssl
import time
from typing import Any

import structlog
from aiohttp import web

from gateway import plugins as plugin_registry
from gateway.config import Config, ConfigError
from gateway.dispatch import Dispatcher
from gateway.http import GATEWAY_KEY
from gateway.intake import Intake
from gateway.message import Message
from gateway.plugins import PluginManager, StartupError
from gateway.scheduler import Scheduler, dsn_message
from gateway.session import Stash
from gateway.smtp import GatewaySMTP, protocol_factory
from gateway.spool import QueuedMessage, Spool, SpoolError
from gateway.events import Event
from gateway.store.base import StatusUpdate, Store, open_store
from gateway.transports.base import AttemptResult, Transport

log = structlog.get_logger("gateway.server")


class Gateway:
    def __init__(self, config: Config, pm: PluginManager | None = None, *, load_entry_points: bool = True) -> None:
        self.config = config
        self.pm = pm or plugin_registry.create(config.plugins_disabled, load_entry_points=load_entry_points)
        self.dispatch = Dispatcher(self.pm, gateway=self)
        self.stash = Stash()
        self.store: Store = open_store(config.state)
        self.spool = Spool(config.spool_dir, min_free_space=config.limits.min_free_space)
        self.scheduler = Scheduler(self)
        self.intake = Intake(self)
        self.transports: dict[str, Transport] = {}
        self.signer: Any = None
        self.servers: list[asyncio.AbstractServer] = []
        self.http_runner: web.AppRunner | None = None
        self.bound: list[tuple[str, int]] = []
        self.http_bound: tuple[str, int] | None = None
        self.stopping = False
        self.ready = False
        self.started = time.time()

    # -- start-up ------------------------------------------------------------------------------------------
    async def validate(self) -> None:
        errors: list[str] = []
        plugin_names = {name for name, _ in self.pm.list_name_plugin()}
        for account in self.config.accounts.values():
            for key in account.settings:
                if key not in plugin_names:
                    errors.append(f"{self.config.path}: accounts.{account.name}.{key}: unknown key (no plugin named {key!r})")
        for result in await self.dispatch.collect("gateway_validate_config", config=self.config):
            errors.extend(result)
        if errors:
            raise ConfigError(errors[0])
        if self.config.dkim:
            from gateway.signing import load_keys

            self.signer = load_keys(self.config)

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
        for listener in self.config.listeners:
            context = _tls_context(listener.tls_cert, listener.tls_key) if listener.tls_cert else None
            factory = protocol_factory(self.intake, listener, self.config.limits, tls_context=context,
                                       hostname=self.config.hostname)
            try:
                server = await loop.create_server(factory, listener.host, listener.port,
                                                  ssl=context if listener.mode == "smtps" else None,
                                                  ssl_handshake_timeout=self.config.limits.tls_handshake_timeout if listener.mode == "smtps" else None,
                                                  reuse_address=True, backlog=1024)
            except OSError as exc:
                raise StartupError(f"listener {listener.address}: {exc.strerror}") from None
            self.servers.append(server)
            self.bound.append(server.sockets[0].getsockname()[:2])
        if self.config.http is not None:
            await self._start_http()
        self.ready = True
        log.info("gateway started", listeners=[f"{h}:{p}" for h, p in self.bound], queued=self.scheduler.depth,
                 http=f"{self.http_bound[0]}:{self.http_bound[1]}" if self.http_bound else None)

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
        checks = {"listeners": self.ready and not self.stopping, "store": await self.store.ping(),
                  "spool": self.spool.has_space()}
        return web.json_response({"ready": all(checks.values()), "checks": checks}, status=200 if all(checks.values()) else 503)

    # -- state ------------------------------------------------------------------------------------------------
    async def record(self, updates: list[StatusUpdate], events: list[Event]) -> None:
        """Apply status-record updates and append events to the outbox in one store step, then
        tell ``gateway_event`` plugins. Every status change and event goes through here."""
        await self.store.record(updates, events)
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
        signed: bytes = await asyncio.to_thread(self.signer.sign, data, domain)
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
        log.info("gateway stopping", sessions=len(self.intake.sessions), queued=self.scheduler.depth)
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
        for transport in self.transports.values():
            await transport.close()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        for server in self.servers:
            await server.wait_closed()
        await self.store.close()
        self.spool.close()
        log.info("gateway stopped")


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert or "", key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"listener tls_cert/tls_key: cannot load: {exc}") from None
    return context


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    gateway = Gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await gateway.start()
    except BaseException:
        await gateway.stop()
        raise
    await stop.wait()
    await gateway.stop()
    return 0
