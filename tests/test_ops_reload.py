"""Reload under load (reliability.md §9): a gateway subprocess gets SIGHUP 10 times while
clients send continuously, twice with a broken file. Nothing is lost, no client sees an
error, a good file takes effect for new sessions, a broken one changes nothing."""
from __future__ import annotations

import asyncio
import signal

import aiosmtplib
import pytest
from ops_util import Load, NotifySocket, ids_of
from proc import GatewayProcess, free_port

from gateway.testing import SinkServer, make_config

pytestmark = pytest.mark.slow


async def advertised_size(port: int) -> int:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as smtp:
        await smtp.ehlo()
        return int(smtp.esmtp_extensions["size"])


async def test_reload_ten_times_under_load(tmp_path):
    async with SinkServer() as sink:
        port = free_port()
        path = tmp_path / "gw.toml"

        def write(size: int, broken: str = "") -> None:
            text = make_config(tmp_path, sink.port, limits=f"max_message_size = {size}",
                               server='log_level = "warning"').replace("127.0.0.1:0", f"127.0.0.1:{port}")
            if broken == "toml":
                text += "\n[limits\n"
            elif broken == "dkim":      # parses, but the new signer cannot be built: validated completely
                text = text.replace("example.com.s1.pem", "missing.pem")
            path.write_text(text)

        write(1_000_000)
        notify = NotifySocket()
        gateway = GatewayProcess(path, port, env=notify.env()).start()
        try:
            await asyncio.to_thread(notify.wait_for, "READY", "1")
            load = Load(port)
            load.start()
            current = 1_000_000
            for attempt in range(10):
                broken = {3: "toml", 7: "dkim"}.get(attempt, "")
                size = 2_000_000 + attempt
                write(size, broken)
                mark = len(notify.messages)
                gateway.proc.send_signal(signal.SIGHUP)
                await asyncio.to_thread(notify.wait_for, "RELOADING", "1", after=mark)
                status = (await asyncio.to_thread(notify.wait_for, "READY", "1", after=mark))["STATUS"]
                if broken:
                    assert "reload FAILED" in status, status
                else:
                    assert "FAILED" not in status, status
                    current = size
                assert await advertised_size(port) == current        # a new session sees the running config
                await asyncio.sleep(0.1)
            await load.finish()
            assert load.errors == []
            assert len(load.acked) > 50
            async with asyncio.timeout(30):
                while not set(ids_of(sink.messages)) >= load.acked:
                    await asyncio.sleep(0.05)
            assert await asyncio.to_thread(gateway.terminate) == 0
            log = gateway.log()
            assert log.count("reload failed") == 2 and "Traceback" not in log
            print(f"\nreload test: {len(load.acked)} messages acknowledged and delivered across 10 reloads")
        finally:
            notify.close()
            if gateway.proc and gateway.proc.poll() is None:
                gateway.kill()
