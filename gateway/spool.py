"""The durable spool: one file per message, committed before the client hears ``250``.

Layout under ``spool_dir``::

    tmp/              files being written; anything here at start-up is half-written and removed
    queue/w<N>/       committed messages of worker N: <MessageId>.msg and its state log .log
    corrupt/          unreadable files, moved aside at start-up (the queue runner continues)

A ``.msg`` file is ``SESGW1\\n<len>\\n<envelope JSON>\\n<message bytes>``. It is written to
``tmp/``, fsynced, renamed into ``queue/`` and the directory fsynced (DESIGN §5) before
``commit`` returns. Commits that arrive together share one batch (group commit): one thread
writes and fsyncs every file of the batch, then fsyncs the directory once.

Per-recipient progress is appended to ``<MessageId>.log`` as JSON lines; a recipient is done
once a ``delivered`` or ``bounced`` line is there. Losing the last lines in a power cut can
only repeat a delivery (at most one duplicate per in-flight recipient), never lose one.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("gateway.spool")

MAGIC = b"SESGW1\n"
FINAL = ("delivered", "bounced")


class SpoolError(Exception):
    """Writing to the spool failed; the message is not acknowledged (451 4.3.0)."""


@dataclass
class RecipientState:
    recipient: str
    status: str = "queued"           # queued | deferred | delivered | bounced
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    held: bool = False

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass
class QueuedMessage:
    message_id: str
    account: str | None
    sender: str
    recipients: list[RecipientState]
    received: float
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    size: int = 0
    held: bool = False

    def envelope(self) -> dict[str, Any]:
        return {
            "id": self.message_id, "account": self.account, "sender": self.sender,
            "recipients": [r.recipient for r in self.recipients], "received": self.received,
            "meta": self.meta,
        }

    @property
    def done(self) -> bool:
        return all(r.final for r in self.recipients)


def new_message_id(node: str) -> str:
    # Shaped like Tencent's (qcloudses-30-4123414323-date-20210101094334-syNARhMTbKI1):
    # opaque to clients, sortable by time, safe as a file name.
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"sesgw-{node}-date-{stamp}-{secrets.token_urlsafe(9).replace('-', 'x').replace('_', 'y')}"


@dataclass
class _Job:
    message: QueuedMessage
    data: bytes
    future: asyncio.Future[None]


class Spool:
    def __init__(self, root: str, *, worker: int = 0, min_free_space: int = 0) -> None:
        self.root = root
        self.tmp_dir = os.path.join(root, "tmp")
        self.queue_dir = os.path.join(root, "queue", f"w{worker}")
        self.corrupt_dir = os.path.join(root, "corrupt")
        self.min_free_space = min_free_space
        self._jobs: list[_Job] = []
        self._committer: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._space_checked = 0.0
        self._space_ok = True
        self._log_fds: dict[str, int] = {}

    # -- start-up --------------------------------------------------------------------------
    def open(self) -> None:
        for path in (self.tmp_dir, self.queue_dir, self.corrupt_dir):
            os.makedirs(path, mode=0o750, exist_ok=True)
        lock_path = self.queue_dir + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"spool {self.queue_dir} is in use by another gateway process") from None
        self._lock_fd = fd
        # Anything in tmp/ was never acknowledged: the client got no 250 and will retry.
        for name in os.listdir(self.tmp_dir):
            os.unlink(os.path.join(self.tmp_dir, name))

    def close(self) -> None:
        for fd in self._log_fds.values():
            os.close(fd)
        self._log_fds.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> list[QueuedMessage]:
        """Every committed message with its per-recipient state (in-flight ones are queued again)."""
        messages = []
        names = set(os.listdir(self.queue_dir))
        for name in sorted(names):
            if name.endswith(".log") and name[:-4] + ".msg" not in names:
                os.unlink(os.path.join(self.queue_dir, name))   # message finished, log left over
        for name in sorted(names):
            if not name.endswith(".msg"):
                continue
            path = os.path.join(self.queue_dir, name)
            try:
                message = self._load(path)
            except (OSError, ValueError, KeyError) as exc:
                log.error("corrupt spool file moved aside", file=name, error=str(exc))
                shutil.move(path, os.path.join(self.corrupt_dir, name))
                continue
            if message.done:
                self._remove_files(message)
                continue
            messages.append(message)
        return messages

    def _load(self, path: str) -> QueuedMessage:
        with open(path, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                raise ValueError("bad magic")
            length = int(fh.readline())
            envelope = json.loads(fh.read(length))
            size = os.fstat(fh.fileno()).st_size
        message = QueuedMessage(
            message_id=envelope["id"], account=envelope.get("account"), sender=envelope["sender"],
            recipients=[RecipientState(r) for r in envelope["recipients"]], received=envelope["received"],
            meta=envelope.get("meta", {}), path=path, size=size,
        )
        log_path = path[:-4] + ".log"
        if os.path.exists(log_path):
            with open(log_path, "rb") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        break        # a torn last line from a crash: ignore it
                    if "held" in entry and "r" not in entry:
                        message.held = bool(entry["held"])
                        continue
                    state = message.recipients[entry["r"]]
                    state.status = entry["s"]
                    state.attempts = entry.get("a", state.attempts)
                    state.next_attempt = entry.get("n", 0.0)
                    state.last_error = entry.get("e", "")
        return message

    def read_data(self, message: QueuedMessage) -> bytes:
        with open(message.path, "rb") as fh:
            fh.read(len(MAGIC))
            length = int(fh.readline())
            fh.seek(length + 1, os.SEEK_CUR)
            return fh.read()

    # -- intake ------------------------------------------------------------------------------
    def has_space(self) -> bool:
        """Free space above ``min_free_space`` (checked at most once a second)."""
        now = time.monotonic()
        if now - self._space_checked > 1.0:
            self._space_checked = now
            try:
                stat = os.statvfs(self.root)
                self._space_ok = stat.f_bavail * stat.f_frsize >= self.min_free_space
            except OSError:
                self._space_ok = False
        return self._space_ok

    async def commit(self, message: QueuedMessage, data: bytes) -> None:
        """Write ``message`` durably; returns only once it is on stable storage."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(message, data, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_loop())
        await future

    async def _commit_loop(self) -> None:
        while self._jobs:
            batch, self._jobs = self._jobs, []
            try:
                failed = await asyncio.to_thread(self._write_batch, batch)
            except BaseException as exc:  # every waiter must hear the outcome, even on cancel
                failed = {id(job): SpoolError(str(exc) or type(exc).__name__) for job in batch}
                if isinstance(exc, asyncio.CancelledError):
                    _settle(batch, failed)
                    raise
            _settle(batch, failed)

    def _write_batch(self, batch: list[_Job]) -> dict[int, SpoolError]:
        written = []
        failed: dict[int, SpoolError] = {}
        for job in batch:
            message = job.message
            envelope = json.dumps(message.envelope(), separators=(",", ":")).encode()
            name = f"{message.message_id}.msg"
            tmp = os.path.join(self.tmp_dir, name)
            final = os.path.join(self.queue_dir, name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                try:
                    payload = b"".join((MAGIC, str(len(envelope)).encode(), b"\n", envelope, b"\n", job.data))
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, final)
                message.path = final
                message.size = len(payload)
                written.append(job)
            except OSError as exc:
                # Never retry an fsync and trust it (Linux may drop dirty pages after a
                # failed fsync): the file is discarded and the client told to retry.
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                log.error("spool write failed", message_id=message.message_id, error=exc.strerror)
                failed[id(job)] = SpoolError(exc.strerror or "write error")
        if written:
            dir_fd = os.open(self.queue_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)     # the renames are durable only once the directory is
            except OSError as exc:
                for job in written:
                    failed[id(job)] = SpoolError(exc.strerror or "fsync error")
            finally:
                os.close(dir_fd)
        return failed

    # -- delivery progress --------------------------------------------------------------------
    def record(self, message: QueuedMessage, index: int, *, sync: bool = False) -> None:
        """Append recipient ``index``'s state to the message's log (blocking; call in a thread
        or accept a small write: appends of < 200 bytes go to the page cache)."""
        state = message.recipients[index]
        entry: dict[str, Any] = {"r": index, "s": state.status, "a": state.attempts}
        if state.next_attempt:
            entry["n"] = round(state.next_attempt, 3)
        if state.last_error:
            entry["e"] = state.last_error[:500]
        self._append(message, entry, sync)

    def record_hold(self, message: QueuedMessage, held: bool) -> None:
        self._append(message, {"held": held}, True)

    def _append(self, message: QueuedMessage, entry: dict[str, Any], sync: bool) -> None:
        fd = self._log_fds.get(message.message_id)
        if fd is None:
            fd = os.open(message.path[:-4] + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._log_fds[message.message_id] = fd
        os.write(fd, json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        if sync:
            os.fsync(fd)

    def remove(self, message: QueuedMessage) -> None:
        self._remove_files(message)

    def _remove_files(self, message: QueuedMessage) -> None:
        fd = self._log_fds.pop(message.message_id, None)
        if fd is not None:
            os.close(fd)
        # .msg first: a .log without its .msg is removed at start-up; the other way round
        # would redeliver a finished message.
        for path in (message.path, message.path[:-4] + ".log"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _settle(batch: list[_Job], failed: dict[int, SpoolError]) -> None:
    for job in batch:
        if job.future.done():
            continue
        error = failed.get(id(job))
        if error is None:
            job.future.set_result(None)
        else:
            job.future.set_exception(error)
