"""SQLite backend: one file, WAL mode, safe for several processes on one host.

All statements run in one dedicated thread (sqlite3 objects are bound to their thread);
writes that arrive together are committed in one transaction (group commit), so the hot
path costs one fsync-free WAL append per batch (``synchronous=NORMAL``: durable across
process crashes; across power loss the last batch may be lost, the spool is the record).
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from gateway.events import Event
from gateway.store.base import OutboxItem, StatusUpdate, Store

T = TypeVar("T")
RETENTION = 30 * 86400          # status records are kept 30 days (GetSendEmailStatus)

SCHEMA = """
CREATE TABLE IF NOT EXISTS status (
    message_id TEXT NOT NULL, recipient TEXT NOT NULL, account TEXT,
    request_time REAL NOT NULL, day TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (message_id, recipient)
);
CREATE INDEX IF NOT EXISTS status_day ON status (day, request_time);
CREATE INDEX IF NOT EXISTS status_rcpt ON status (recipient, request_time);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, account TEXT,
    message_id TEXT, event TEXT NOT NULL, payload TEXT NOT NULL, created REAL NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL);
CREATE TABLE IF NOT EXISTS sets (
    key TEXT NOT NULL, member TEXT NOT NULL, expires REAL, data TEXT NOT NULL DEFAULT '{}',
    added REAL NOT NULL, PRIMARY KEY (key, member)
);
"""


class SqliteStore(Store):
    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- plumbing ------------------------------------------------------------------------------------
    def _connect(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        # Switching a new file to WAL needs it exclusively and does not wait on the busy
        # handler: processes starting together (worker mode) retry instead of failing.
        for attempt in range(50):
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.05)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        db.executescript(SCHEMA)
        self._db = db

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._db is not None, "store is not open"
        db = self._db
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, db)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Queue ``fn`` for the next write transaction; resolves once it is committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            assert self._db is not None
            results = await loop.run_in_executor(self._executor, _run_batch, self._db, batch)
            for (_, future), (ok, value) in zip(batch, results):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    # -- status and events ---------------------------------------------------------------------------------
    async def record(self, updates: list[StatusUpdate], events: list[Event]) -> None:
        def run(db: sqlite3.Connection) -> None:
            for update in updates:
                _upsert_status(db, update)
            for event in events:
                db.execute(
                    "INSERT OR IGNORE INTO outbox (id, account, message_id, event, payload, created, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                    (event.id, event.account, event.message_id, event.event, json.dumps(event.to_dict()), event.timestamp))
        await self._write(run)

    async def query_status(self, *, date: str | None = None, message_id: str | None = None,
                           recipient: str | None = None, account: str | None = None,
                           offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("day", date), ("message_id", message_id), ("recipient", recipient), ("account", account)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        sql = f"SELECT message_id, recipient, account, data FROM status{where} ORDER BY request_time DESC, recipient LIMIT ? OFFSET ?"

        def run(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute(sql, (*args, limit, offset)).fetchall()
            return [{"MessageId": m, "ToEmailAddress": r, "Account": a, **json.loads(d)} for m, r, a, d in rows]
        return await self._read(run)

    async def outbox(self, *, state: str | None = None, due_before: float | None = None,
                     limit: int = 100, after_seq: int = 0) -> list[OutboxItem]:
        clauses: list[str] = ["seq > ?"]
        args: list[Any] = [after_seq]
        if state is not None:
            clauses.append("state = ?")
            args.append(state)
        if due_before is not None:
            clauses.append("next_attempt <= ?")
            args.append(due_before)
        sql = ("SELECT seq, payload, state, attempts, next_attempt, last_error FROM outbox WHERE "
               + " AND ".join(clauses) + " ORDER BY seq LIMIT ?")

        def run(db: sqlite3.Connection) -> list[OutboxItem]:
            return [OutboxItem(seq, Event.from_dict(json.loads(payload)), st, att, nxt, err)
                    for seq, payload, st, att, nxt, err in db.execute(sql, (*args, limit))]
        return await self._read(run)

    async def outbox_update(self, seq: int, *, state: str, attempts: int, next_attempt: float, last_error: str) -> None:
        await self._write(lambda db: db.execute(
            "UPDATE outbox SET state = ?, attempts = ?, next_attempt = ?, last_error = ? WHERE seq = ?",
            (state, attempts, next_attempt, last_error[:1000], seq)))

    # -- counters and sets ----------------------------------------------------------------------------------
    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None, limit: int | None = None) -> tuple[bool, int]:
        def run(db: sqlite3.Connection) -> tuple[bool, int]:
            now = time.time()
            # BEGIN IMMEDIATE (in _run_batch) makes read-check-write atomic across processes.
            row = db.execute("SELECT value, expires FROM counters WHERE key = ?", (key,)).fetchone()
            if row is None or (row[1] is not None and row[1] <= now):
                value, expires = 0, (now + ttl if ttl else None)
            else:
                value, expires = row
            if limit is not None and value + amount > limit:
                return False, value
            db.execute("INSERT OR REPLACE INTO counters (key, value, expires) VALUES (?, ?, ?)",
                       (key, value + amount, expires))
            return True, value + amount
        return await self._write(run)

    async def get_counter(self, key: str) -> int:
        def run(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT value FROM counters WHERE key = ? AND (expires IS NULL OR expires > ?)",
                             (key, time.time())).fetchone()
            return int(row[0]) if row else 0
        return await self._read(run)

    async def set_add(self, key: str, member: str, *, ttl: float | None = None, data: dict[str, Any] | None = None) -> None:
        now = time.time()
        await self._write(lambda db: db.execute(
            "INSERT OR REPLACE INTO sets (key, member, expires, data, added) VALUES (?, ?, ?, ?, ?)",
            (key, member, now + ttl if ttl else None, json.dumps(data or {}), now)))

    async def set_remove(self, key: str, member: str) -> bool:
        cursor = await self._write(lambda db: db.execute("DELETE FROM sets WHERE key = ? AND member = ?", (key, member)))
        return bool(cursor.rowcount)

    async def set_get(self, key: str, member: str) -> dict[str, Any] | None:
        def run(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT data FROM sets WHERE key = ? AND member = ? AND (expires IS NULL OR expires > ?)",
                             (key, member, time.time())).fetchone()
            return json.loads(row[0]) if row else None
        return await self._read(run)

    async def set_members(self, key: str, *, prefix: str = "", offset: int = 0, limit: int = 100) -> list[tuple[str, dict[str, Any], float | None]]:
        def run(db: sqlite3.Connection) -> list[tuple[str, dict[str, Any], float | None]]:
            rows = db.execute(
                "SELECT member, data, expires FROM sets WHERE key = ? AND member LIKE ? ESCAPE '\\' "
                "AND (expires IS NULL OR expires > ?) ORDER BY added DESC, member LIMIT ? OFFSET ?",
                (key, _like_prefix(prefix), time.time(), limit, offset)).fetchall()
            return [(m, json.loads(d), e) for m, d, e in rows]
        return await self._read(run)

    async def purge(self, now: float) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM counters WHERE expires IS NOT NULL AND expires <= ?", (now,))
            db.execute("DELETE FROM sets WHERE expires IS NOT NULL AND expires <= ?", (now,))
            db.execute("DELETE FROM status WHERE request_time < ?", (now - RETENTION,))
            db.execute("DELETE FROM outbox WHERE state IN ('sent', 'recorded') AND created < ?", (now - RETENTION,))
        await self._write(run)

    async def ping(self) -> bool:
        try:
            await self._read(lambda db: db.execute("SELECT 1").fetchone())
            return True
        except sqlite3.Error:
            return False


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _upsert_status(db: sqlite3.Connection, update: StatusUpdate) -> None:
    row = db.execute("SELECT data FROM status WHERE message_id = ? AND recipient = ?",
                     (update.message_id, update.recipient)).fetchone()
    if row is None:
        request_time = float(update.fields.get("RequestTime") or time.time())
        data = {"SendStatus": 0, "DeliverStatus": 0, "DeliverMessage": "", "RequestTime": int(request_time),
                "DeliverTime": 0, "UserOpened": False, "UserClicked": False, "UserUnsubscribed": False,
                "UserComplained": False}
        data.update(update.fields)
        data["RequestTime"] = int(request_time)
        day = time.strftime("%Y-%m-%d", time.gmtime(request_time))
        db.execute("INSERT INTO status (message_id, recipient, account, request_time, day, data) VALUES (?, ?, ?, ?, ?, ?)",
                   (update.message_id, update.recipient, update.account, request_time, day, json.dumps(data)))
    else:
        data = json.loads(row[0])
        data.update({k: v for k, v in update.fields.items() if k != "RequestTime"})
        db.execute("UPDATE status SET data = ? WHERE message_id = ? AND recipient = ?",
                   (json.dumps(data), update.message_id, update.recipient))


def _run_batch(db: sqlite3.Connection, batch: list[tuple[Callable[[sqlite3.Connection], Any], Any]]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for fn, _ in batch:
            db.execute("SAVEPOINT op")
            try:
                results.append((True, fn(db)))
                db.execute("RELEASE op")
            except Exception as exc:  # one failing operation must not fail its neighbours
                db.execute("ROLLBACK TO op")
                db.execute("RELEASE op")
                results.append((False, exc))
        db.execute("COMMIT")
    except Exception as exc:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return [(False, exc) for _ in batch]
    return results
