"""A real webhook receiver for the callback tests: verifies Standard Webhooks signatures with
the snippet from README.md and answers as it is told (fail N times, 410, 429 +
Retry-After, hang, huge body)."""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

DOCS = Path(__file__).resolve().parent.parent / "README.md"


def docs_verify() -> Callable[..., bool]:
    """The `verify` function exactly as the README prints it."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    code = next(b for b in blocks if "def verify(" in b)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace["verify"]  # type: ignore[no-any-return]


def tencent_sample_handler(raw: bytes) -> dict[str, Any]:
    """A receiver written for Tencent's documented callback sample (doc 1084/39492): plain
    key reads of the fields the sample shows, ``bulkid`` spelled either way."""
    data = json.loads(raw)
    record = {"event": data["event"], "email": data["email"], "bulkId": data.get("bulkId") or data.get("bulkid"),
              "timestamp": int(data["timestamp"]), "reason": data["reason"], "bounceType": data["bounceType"],
              "username": data["username"], "from": data["from"], "fromDomain": data["fromDomain"],
              "templateId": int(data["templateId"]), "subject": data["subject"], "messageId": data["messageId"],
              "eventid": int(data["eventid"]), "custom": data["X-Tencentcloudses-Cb-Custom"]}
    assert record["event"] in ("deferred", "delivered", "dropped", "open", "click", "bounce", "spamreport",
                               "unsubscribe", "processed")
    return record


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    verified: bool
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    huge: bool = False


class Receiver:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.verify = docs_verify()
        self.hits: list[Hit] = []
        self.answers: list[Answer] = []      # consumed one per request; then 200
        self.default = Answer()
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = bool(self.secret) and "webhook-signature" in headers and self.verify(self.secret, headers, body)
        answer = self.answers.pop(0) if self.answers else self.default
        self.hits.append(Hit(headers, body, verified, time.time()))
        self.changed.set()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.huge:        # 100 MB: the sender must stop reading at 64 KB
            response = web.StreamResponse(status=answer.status)
            await response.prepare(request)
            chunk = b"x" * 65536
            try:
                for _ in range(1600):
                    await response.write(chunk)
            except (ConnectionResetError, ConnectionError):
                pass
            return response
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    def events(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for hit in self.hits:
            data = hit.json
            found.extend(data if isinstance(data, list) else [data])
        return found

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, port: int = 0) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        server: Any = site._server
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def __aenter__(self) -> "Receiver":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
