"""Shared helpers for the SES policy tests (issue 4)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rawsmtp import RawClient

from gateway.ses_settings import CLOCK
from gateway.testing import make_config

HTTP = '[http]\naddress = "127.0.0.1:0"\npublic_url = "http://127.0.0.1"\nadmin_token = "t"\n'
AUTH = {"Authorization": "Bearer t"}


def policy_config(tmp_path: Path, port: int | None, policy: str = "", *, accounts: str = "", limits: str = "",
                  http: bool = False, extra: str = "") -> str:
    return make_config(tmp_path, port, accounts=accounts, limits=limits,
                       extra=f"{HTTP if http else ''}[plugins.ses_policy]\n{policy}\n{extra}")


def body(subject: str = "hello", headers: str = "", text: str = "Hello world") -> bytes:
    return (f"From: App <app@example.com>\r\nTo: to@example.net\r\nSubject: {subject}\r\n{headers}"
            f"Message-ID: <m{time.monotonic_ns()}@example.com>\r\n\r\n{text}\r\n").encode()


async def transaction(gw, recipients, message: bytes | None = None, sender: str = "app@example.com"):
    """One SMTP transaction; returns (MAIL reply, [RCPT replies], DATA reply or None)."""
    client = await RawClient.connect(gw.host, gw.port)
    try:
        assert (await client.ehlo()).code == 250
        mail = await client.cmd(f"MAIL FROM:<{sender}>")
        if mail.code != 250:
            return mail, [], None
        rcpts = [await client.cmd(f"RCPT TO:<{r}>") for r in recipients]
        data = None
        if message is not None and any(r.code == 250 for r in rcpts):
            data = await client.data(message)
        await client.cmd("QUIT")
        return mail, rcpts, data
    finally:
        await client.close()


class Clock:
    """A controllable policy clock: ``gateway.stash[CLOCK] = clock``."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def install(self, gw) -> "Clock":
        gw.gateway.stash[CLOCK] = self
        return self


async def wait_until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
