"""A connection pool for outbound SMTP: aiosmtplib has none (reliability.md §3.2).

One ``aiosmtplib.SMTP`` is one connection; the pool keeps ready (greeted, EHLO'd, TLS'd,
authenticated) connections per :class:`PoolKey` and hands them out one transaction at a time.
A reused connection gets ``RSET`` first (RFC 5321 §4.1.1.5), which also proves it is still
alive. Connections retire after ``idle`` seconds unused (Haraka uses 50 s) or after
``messages_per_connection`` transactions, and never return to the pool after an error.

Two limits: at most ``per_destination`` deliveries to one destination at a time (a remote
site's concurrency limit, keyed by ``Route.destination``) and at most ``max_connections``
open connections in all; at the global cap an idle connection to another destination is
closed to make room, otherwise the caller waits.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib
import structlog

log = structlog.get_logger("gateway.transports")

QUIT_TIMEOUT = 5.0   # a polite QUIT when retiring a healthy connection; never wait long for it


@dataclass(frozen=True)
class PoolKey:
    host: str                       # the address (or smarthost name) connected to
    port: int
    source_address: str | None      # the local IP bound (warm-up pins mail to an IP)
    tls: str                        # opportunistic | starttls | tls | none
    # Beyond the four above: a verified session is not interchangeable with an unverified
    # one, and a session authenticated as one user must not carry another user's mail.
    verify: bool = True
    username: str | None = None


@dataclass(eq=False)
class PooledConnection:
    key: PoolKey
    smtp: aiosmtplib.SMTP
    remote_host: str                # the MX / smarthost name, for results and logs
    uses: int = 0
    last_used: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None

    @property
    def tls(self) -> bool:
        return self.smtp.get_transport_info("sslcontext") is not None

    def supports(self, extension: str) -> bool:
        return self.smtp.supports_extension(extension)


Connector = Callable[[], Awaitable[aiosmtplib.SMTP]]


class PoolClosed(RuntimeError):
    """The pool was closed (shutdown): no new transactions."""


class _Slot:
    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0


class ConnectionPool:
    def __init__(self, *, max_connections: int, per_destination: int, idle: float,
                 messages_per_connection: int, command_timeout: float) -> None:
        self.max_connections = max_connections
        self.per_destination = per_destination
        self.idle = idle
        self.messages_per_connection = messages_per_connection
        self.command_timeout = command_timeout
        self.open = 0                                   # connections counted against the cap
        self._idle: dict[PoolKey, list[PooledConnection]] = {}
        self._slots: dict[str, _Slot] = {}
        # Callers waiting for room under the global cap. Plain futures, appended with no
        # suspension after the check, so a wake-up can never fall between check and wait.
        self._waiters: list[asyncio.Future[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- per-destination concurrency -----------------------------------------------------------
    @contextlib.asynccontextmanager
    async def slot(self, destination: str) -> AsyncIterator[None]:
        """Hold one of the ``per_destination`` delivery slots of ``destination``."""
        slot = self._slots.get(destination)
        if slot is None:
            slot = self._slots[destination] = _Slot(self.per_destination)
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                # Bounded memory: no entry for destinations nobody is delivering to.
                del self._slots[destination]

    def active(self, destination: str) -> int:
        """Deliveries holding or waiting for a slot of ``destination`` (for tests and metrics)."""
        slot = self._slots.get(destination)
        return slot.users if slot else 0

    def idle_connections(self) -> list[PooledConnection]:
        """Connections waiting in the pool (for tests and metrics)."""
        return [conn for conns in self._idle.values() for conn in conns]

    # -- connections ---------------------------------------------------------------------------
    async def acquire(self, key: PoolKey, connect: Connector, *, remote_host: str) -> tuple[PooledConnection, bool]:
        """A ready connection for ``key`` and whether it was reused; ``connect`` makes a new one.

        Whatever ``connect`` raises propagates (the reserved place under the cap is given back).
        """
        if self._closed:
            raise PoolClosed("connection pool is closed")
        while True:
            reused = await self._take_idle(key)
            if reused is not None:
                return reused, True
            if self.open < self.max_connections:
                self.open += 1
                try:
                    smtp = await connect()
                except BaseException:
                    self.open -= 1
                    self._wake()
                    raise
                return PooledConnection(key, smtp, remote_host), False
            victim = self._oldest_idle()
            if victim is not None:
                self._forget_idle(victim)
                await self._retire(victim, polite=True)
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def release(self, conn: PooledConnection, *, reusable: bool) -> None:
        """Give ``conn`` back after one transaction; ``reusable=False`` after any error."""
        conn.uses += 1
        conn.last_used = time.monotonic()
        keep = (reusable and not self._closed and conn.smtp.is_connected
                and conn.uses < self.messages_per_connection)
        if not keep:
            await self._retire(conn, polite=reusable and conn.smtp.is_connected)
            return
        self._idle.setdefault(conn.key, []).append(conn)
        conn.timer = asyncio.get_running_loop().call_later(self.idle, self._expire, conn)
        self._wake()

    async def close(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self._closed = True
        idle = self.idle_connections()
        for conn in idle:
            self._forget_idle(conn)
        await asyncio.gather(*(self._retire(conn, polite=True) for conn in idle))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------
    async def _take_idle(self, key: PoolKey) -> PooledConnection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns[-1]           # the most recently used: least likely to be stale
            self._forget_idle(conn)
            if not conn.smtp.is_connected:
                await self._retire(conn, polite=False)
                conns = self._idle.get(key)
                continue
            try:
                await conn.smtp.rset(timeout=self.command_timeout)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                log.debug("pooled connection unusable", host=conn.remote_host, error=type(exc).__name__)
                await self._retire(conn, polite=False)
                conns = self._idle.get(key)
                continue
            return conn
        return None

    def _forget_idle(self, conn: PooledConnection) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        conns = self._idle.get(conn.key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._idle[conn.key]

    def _oldest_idle(self) -> PooledConnection | None:
        return min(self.idle_connections(), key=lambda c: c.last_used, default=None)

    def _expire(self, conn: PooledConnection) -> None:
        conn.timer = None
        self._forget_idle(conn)
        task = asyncio.get_running_loop().create_task(self._retire(conn, polite=True))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _retire(self, conn: PooledConnection, *, polite: bool) -> None:
        self.open -= 1
        try:
            if polite and conn.smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await conn.smtp.quit(timeout=min(self.command_timeout, QUIT_TIMEOUT))
        finally:
            conn.smtp.close()
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
