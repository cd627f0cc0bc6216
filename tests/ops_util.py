"""Helpers for the ops tests: a systemd-style notify socket and a continuous SMTP load."""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import time

import aiosmtplib


class NotifySocket:
    """The receiving end of sd_notify: a datagram socket like systemd's, abstract by default."""

    def __init__(self, path: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"sesgw-test-{os.getpid()}-{secrets.token_hex(4)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(path)
            self.address = path
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def env(self, watchdog_usec: int = 0) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def wait_for(self, key: str, value: str | None = None, *, after: int = 0, timeout: float = 20.0) -> dict[str, str]:
        """The first message at index >= ``after`` carrying ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            for fields in self.messages[after:]:
                if key in fields and (value is None or fields[key] == value):
                    return fields
            time.sleep(0.01)
        raise AssertionError(f"no {key}={value} after {after}: {self.messages[after:]}")

    def close(self) -> None:
        self.sock.close()


def make_message(number: int) -> bytes:
    return (f"From: app@example.com\r\nTo: to@example.net\r\nSubject: ops {number}\r\n"
            f"X-Test-Id: {number}\r\n\r\n" + "body line\r\n" * 20).encode()


def ids_of(messages) -> list[int]:
    return [int(re.search(rb"X-Test-Id: (\d+)", m.data).group(1)) for m in messages]


class Load:
    """Clients sending continuously: some reconnect per message, one keeps a long session."""

    def __init__(self, port: int, *, tolerate_errors: bool = False) -> None:
        self.port = port
        self.tolerate_errors = tolerate_errors
        self.acked: set[int] = set()
        self.errors: list[str] = []
        self.stop = asyncio.Event()
        self._next = 0
        self.tasks: list[asyncio.Task[None]] = []

    def _number(self) -> int:
        self._next += 1
        return self._next

    async def _short(self) -> None:
        while not self.stop.is_set():
            number = self._number()
            try:
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=10) as smtp:
                    errors, reply = await smtp.sendmail("app@example.com", ["to@example.net"], make_message(number))
                if errors or "Ok sesgw-" not in reply:
                    self.errors.append(f"{number}: {errors} {reply}")
                else:
                    self.acked.add(number)
            except (aiosmtplib.SMTPException, OSError) as exc:
                self.errors.append(f"{number}: {exc!r}")
                if self.tolerate_errors:
                    await asyncio.sleep(0.05)

    async def _long(self) -> None:
        # One session across many reloads: it must finish on the configuration it started with.
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=10) as smtp:
                while not self.stop.is_set():
                    number = self._number()
                    errors, reply = await smtp.sendmail("app@example.com", ["to@example.net"], make_message(number))
                    if errors or "Ok sesgw-" not in reply:
                        self.errors.append(f"{number}: {errors} {reply}")
                    else:
                        self.acked.add(number)
                    await asyncio.sleep(0.01)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.errors.append(f"long session: {exc!r}")

    def start(self, short_clients: int = 4, long_session: bool = True) -> None:
        self.tasks = [asyncio.create_task(self._short()) for _ in range(short_clients)]
        if long_session:
            self.tasks.append(asyncio.create_task(self._long()))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
