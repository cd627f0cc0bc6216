"""A byte-exact SMTP client for tests: sends exactly what it is given, reads whole replies."""
from __future__ import annotations

import asyncio
import ssl


class Reply:
    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.code = int(lines[-1][:3]) if lines else 0
        last = lines[-1][4:].decode("utf-8", "replace") if lines else ""
        parts = last.split(" ", 1)
        self.enhanced = parts[0] if len(parts[0].split(".")) == 3 else ""
        self.text = last

    def __repr__(self) -> str:
        return f"<Reply {b' | '.join(self.lines)!r}>"


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, *, tls: ssl.SSLContext | None = None, greet: bool = True) -> "RawClient":
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        client = cls(reader, writer)
        if greet:
            banner = await client.reply()
            assert banner.code == 220, banner
        return client

    async def reply(self, timeout: float = 5.0) -> Reply:
        lines = []
        async with asyncio.timeout(timeout):
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                lines.append(line.rstrip(b"\r\n"))
                if len(line) >= 4 and line[3:4] == b" ":
                    break
        return Reply(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes, timeout: float = 5.0) -> Reply:
        data = line.encode() if isinstance(line, str) else line
        await self.send(data + b"\r\n")
        return await self.reply(timeout)

    async def ehlo(self, name: str = "client.test") -> Reply:
        return await self.cmd(f"EHLO {name}")

    async def start(self, sender: str = "app@example.com", recipients: tuple[str, ...] = ("to@example.net",)) -> None:
        assert (await self.ehlo()).code == 250
        reply = await self.cmd(f"MAIL FROM:<{sender}>")
        assert reply.code == 250, reply
        for rcpt in recipients:
            reply = await self.cmd(f"RCPT TO:<{rcpt}>")
            assert reply.code == 250, reply

    async def data(self, body: bytes, *, terminator: bytes = b"\r\n.\r\n", timeout: float = 5.0) -> Reply:
        reply = await self.cmd("DATA")
        assert reply.code == 354, reply
        await self.send(body + terminator)
        return await self.reply(timeout)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (the client side is closed too)."""
        try:
            async with asyncio.timeout(timeout):
                eof = await self.reader.read() == b""
        except ConnectionError:
            eof = True
        except TimeoutError:
            eof = False
        await self.close()
        return eof

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
