"""Several worker processes on one spool and one store, to use every core (DESIGN §9).

``[server] workers = N`` makes ``ses-gateway run`` a small supervisor (no event loop of its
own) that forks N workers. Each worker is a complete gateway:

- its SMTP listeners bind the configured addresses with ``SO_REUSEPORT``, so the kernel
  spreads connections across the workers;
- its spool is its own ``queue/w<N>`` directory, held with flock, so no two processes ever
  deliver the same message; everything shared (limits, blocklist, status records, the event
  outbox, warm-up budgets) is in the store, which is safe for several processes;
- worker 0 alone runs the HTTP listener (admin API, /metrics, unsubscribe pages) and the
  singletons (the callback sender), so they exist once per node.

The supervisor forwards SIGTERM/SIGINT/SIGHUP to the workers, restarts a worker that dies
unexpectedly (at most once a second), and tells systemd READY=1 once every worker listens
(workers do not talk to NOTIFY_SOCKET themselves: systemd accepts the main PID only).
Before forking it moves messages of workers that no longer exist (the count went down) into
the remaining workers' directories, so nothing queued is stranded.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import select
import signal
import sys
import time

import structlog

from gateway.config import Config
from gateway.sdnotify import Notifier

log = structlog.get_logger("gateway.workers")


def adopt_orphans(spool_dir: str, workers: int) -> int:
    """Move messages from queue/w<K> (K >= workers) into queue/w<K mod workers>."""
    queue = os.path.join(spool_dir, "queue")
    moved = 0
    if not os.path.isdir(queue):
        return 0
    for name in os.listdir(queue):
        if not (name.startswith("w") and name[1:].isdigit()) or int(name[1:]) < workers:
            continue
        source = os.path.join(queue, name)
        if not os.path.isdir(source):
            continue
        lock = os.open(source + ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)     # a running old worker keeps its files
        except BlockingIOError:
            os.close(lock)
            continue
        target = os.path.join(queue, f"w{int(name[1:]) % workers}")
        os.makedirs(target, mode=0o750, exist_ok=True)
        for entry in sorted(os.listdir(source)):                   # .log before .msg: see Spool.recover
            os.rename(os.path.join(source, entry), os.path.join(target, entry))
            moved += entry.endswith(".msg")
        os.close(lock)
    return moved


def _worker_main(config: Config, index: int, ready_fd: int) -> None:
    os.environ.pop("NOTIFY_SOCKET", None)
    os.environ.pop("WATCHDOG_USEC", None)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    from gateway.server import serve

    def ready() -> None:
        os.write(ready_fd, b"r")
        os.close(ready_fd)

    code = 1
    try:
        code = asyncio.run(serve(config, worker=index, on_ready=ready))
    except BaseException as exc:  # noqa: BLE001 - the child reports and exits, never returns
        print(f"ses-gateway worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 78 if type(exc).__name__ in ("ConfigError", "StartupError") else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(config: Config) -> int:
    """The supervisor; returns the exit status of the whole service."""
    if config.dkim:
        # Read (and with generate = true, create) the keys once here: a bad key stops the
        # service with one line before any worker starts.
        from gateway.signing import load_keys

        load_keys(config)
    # Create the store's schema once, before the workers open it together.
    from gateway.store.base import open_store

    async def prepare_store() -> None:
        store = open_store(config.state)
        await store.open()
        await store.close()

    asyncio.run(prepare_store())
    moved = adopt_orphans(config.spool_dir, config.workers)
    if moved:
        log.info("queued messages of retired workers adopted", messages=moved)
    notifier = Notifier.from_env()
    children: dict[int, int] = {}          # pid → worker index
    ready_pipes: dict[int, int] = {}       # read fd → worker index (until that worker is ready)
    stopping = False
    pending_signals: list[int] = []

    def spawn(index: int) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _worker_main(config, index, write_fd)
        os.close(write_fd)
        children[pid] = index
        ready_pipes[read_fd] = index

    def on_signal(signum: int, frame: object) -> None:
        pending_signals.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    for index in range(config.workers):
        spawn(index)
    announced = False
    last_restart = 0.0
    exit_code = 0
    while children:
        while pending_signals:
            forwarded = pending_signals.pop(0)
            if forwarded in (signal.SIGTERM, signal.SIGINT) and not stopping:
                stopping = True
                notifier.stopping(f"stopping {len(children)} workers")
            for pid in children:
                try:
                    os.kill(pid, forwarded)
                except ProcessLookupError:
                    pass
        if ready_pipes:
            readable, _, _ = select.select(list(ready_pipes), [], [], 0.2)
            for fd in readable:
                os.read(fd, 1)
                os.close(fd)
                ready_pipes.pop(fd)
            if not ready_pipes and not announced:
                announced = True
                notifier.ready(f"{config.workers} workers ready")
                log.info("workers ready", workers=config.workers)
        else:
            time.sleep(0.2)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            for fd, worker in list(ready_pipes.items()):
                if worker == index:
                    os.close(fd)
                    ready_pipes.pop(fd)
            if stopping:
                exit_code = max(exit_code, code if code > 0 else 0)
                continue
            if code == 78 or not announced:
                # A configuration or start-up error restarts into the same error: stop all.
                log.error("worker failed at start-up", worker=index, code=code)
                stopping = True
                exit_code = 78 if code == 78 else 1
                pending_signals.append(signal.SIGTERM)
                continue
            log.error("worker died, restarting it", worker=index, code=code)
            time.sleep(max(0.0, last_restart + 1.0 - time.monotonic()))
            last_restart = time.monotonic()
            spawn(index)
    notifier.close()
    return exit_code
