"""systemd's readiness protocol (sd_notify(3)) without a dependency.

A datagram per message to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the Linux abstract
namespace). Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.

What the gateway sends (reliability.md §4.4):

- ``READY=1`` once listeners accept and the spool is recovered;
- ``STATUS=...`` with the queue depth (shown by ``systemctl status``);
- ``WATCHDOG=1`` from an event-loop task every ``WATCHDOG_USEC / 2``: a blocked loop
  misses the ping and systemd restarts the service;
- ``RELOADING=1`` + ``MONOTONIC_USEC=`` before a reload (required by ``Type=notify-reload``,
  systemd >= 253) and ``READY=1`` after it;
- ``STOPPING=1`` when the drain starts.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Mapping

import structlog

log = structlog.get_logger("gateway.sdnotify")


class Notifier:
    def __init__(self, address: str | None, *, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Notifier":
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        watchdog = 0
        try:
            watchdog = int(env.get("WATCHDOG_USEC", "0"))
        except ValueError:
            watchdog = 0
        # sd_watchdog_enabled(3): WATCHDOG_PID, when set, names the process meant to ping.
        pid = env.get("WATCHDOG_PID")
        if pid and pid.isdigit() and int(pid) != os.getpid():
            watchdog = 0
        return cls(address, watchdog_usec=max(watchdog, 0))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) recommends."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec > 0 and self.enabled else None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram; ``send(READY=1, STATUS="...")``."""
        if self.address is None:
            return False
        text = "\n".join(f"{key}={_clean(value)}" for key, value in fields.items())
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), target)
        except OSError as exc:
            if not self._failed:          # log once: a missing socket would flood the log
                log.warning("sd_notify failed", socket=self.address, error=exc.strerror)
                self._failed = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def reloading(self) -> bool:
        # CLOCK_MONOTONIC in microseconds: systemd matches it against the SIGHUP it sent.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _clean(value: str | int) -> str:
    # One field per line: a newline in a status text would start a bogus field.
    return str(value).replace("\n", " ")
