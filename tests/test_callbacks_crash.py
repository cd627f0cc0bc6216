"""kill -9 of a gateway subprocess with 200 callback events in the outbox and the receiver
down: after a restart with the receiver up, every event arrives (duplicates allowed, counted
by webhook-id). The outbox, not memory, is the truth (issue 5, reliability.md §5)."""
from __future__ import annotations

import asyncio
import collections
import sqlite3

import aiosmtplib
import pytest
from callbacks_receiver import Receiver
from proc import GatewayProcess, free_port

from gateway.testing import SinkServer, make_config
from gateway.webhooks_signing import generate_secret

pytestmark = pytest.mark.slow

SECRET = generate_secret()


def outbox_states(tmp_path) -> collections.Counter[str]:
    with sqlite3.connect(tmp_path / "state.db") as db:
        return collections.Counter(state for (state,) in db.execute("SELECT state FROM outbox"))


def test_kill_9_with_200_pending_events_loses_none(tmp_path) -> None:
    async def main() -> None:
        receiver_port, port = free_port(), free_port()
        async with SinkServer() as sink:
            url = f"http://127.0.0.1:{receiver_port}/hook"
            text = make_config(tmp_path, sink.port, server='log_level = "warning"',
                               accounts=f'callback_url = "{url}"\n[accounts.app.callbacks]\nsecret = "{SECRET}"\n',
                               extra='[plugins.callbacks]\nallow_private_callbacks = true\nretry_initial = "100ms"\n'
                                     'retry_max = "300ms"\npoll_interval = "100ms"\n')
            path = tmp_path / "gw.toml"
            path.write_text(text.replace("127.0.0.1:0", f"127.0.0.1:{port}"))
            gateway = GatewayProcess(path, port).start()
            try:
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as smtp:
                    for number in range(100):            # 100 messages → processed + delivered = 200 events
                        await smtp.sendmail("app@example.com", ["to@example.net"],
                                            f"From: app@example.com\r\nTo: to@example.net\r\nSubject: n{number}\r\n\r\nhi\r\n")
                async with asyncio.timeout(30):
                    while sum(outbox_states(tmp_path).values()) < 200:
                        await asyncio.sleep(0.05)
                assert outbox_states(tmp_path) == {"pending": 200}      # the receiver is down
                await asyncio.to_thread(gateway.kill)
            finally:
                if gateway.proc is not None and gateway.proc.poll() is None:
                    gateway.kill()
            receiver = await Receiver(SECRET).start(receiver_port)
            try:
                gateway.start()
                try:
                    await receiver.wait_for(lambda: len({h.headers["webhook-id"] for h in receiver.hits}) >= 200, timeout=60)
                    async with asyncio.timeout(10):
                        while outbox_states(tmp_path) != {"sent": 200}:
                            await asyncio.sleep(0.05)
                    assert await asyncio.to_thread(gateway.terminate) == 0
                finally:
                    if gateway.proc is not None and gateway.proc.poll() is None:
                        gateway.kill()
            finally:
                await receiver.stop()
            ids = collections.Counter(h.headers["webhook-id"] for h in receiver.hits)
            assert len(ids) == 200 and all(h.verified for h in receiver.hits)
            print(f"\ncallback crash test: 200 events, {len(receiver.hits)} posts, "
                  f"{sum(c - 1 for c in ids.values())} duplicates")

    asyncio.run(main())
