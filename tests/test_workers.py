"""Several worker processes on one spool and store ([server] workers = N), as real subprocesses."""
from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import subprocess
import time

import aiosmtplib
import pytest
from proc import GatewayProcess, free_port

from gateway.testing import SinkServer, make_config
from gateway.workers import adopt_orphans

pytestmark = pytest.mark.slow


def message(number: int) -> bytes:
    return f"From: app@example.com\r\nTo: to@example.net\r\nSubject: w {number}\r\nX-Test-Id: {number}\r\n\r\nx\r\n".encode()


def workers_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(x) for x in out.split())


def held(path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_two_workers_share_listeners_spool_and_store(tmp_path):
    async def main() -> None:
        async with SinkServer() as sink:
            port, http_port = free_port(), free_port()
            config = tmp_path / "gw.toml"
            config.write_text(make_config(tmp_path, sink.port, server="workers = 2",
                                          extra=f'[http]\naddress = "127.0.0.1:{http_port}"\n')
                              .replace("127.0.0.1:0", f"127.0.0.1:{port}"))
            gateway = GatewayProcess(config, port).start()
            try:
                await asyncio.sleep(0.5)
                children = workers_of(gateway.proc.pid)
                assert len(children) == 2
                queue = tmp_path / "spool" / "queue"
                assert held(queue / "w0.lock") and held(queue / "w1.lock")

                async def client(numbers: range) -> None:
                    for number in numbers:
                        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as smtp:
                            await smtp.sendmail("app@example.com", ["to@example.net"], message(number))

                await asyncio.gather(*(client(range(i, 80, 8)) for i in range(8)))
                await sink.wait_for(80, timeout=30)
                # Both workers took connections: each has a transaction in its log lines' session ids.
                assert len({m.data for m in sink.messages}) == 80
                # One HTTP listener per node (worker 0).
                reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
                writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
                assert b" 200 OK" in (await reader.read()).split(b"\r\n")[0]
                writer.close()
                await writer.wait_closed()
                # A worker that dies is replaced; the service goes on.
                os.kill(children[1], signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and (len(workers_of(gateway.proc.pid)) != 2
                                                       or children[1] in workers_of(gateway.proc.pid)):
                    await asyncio.sleep(0.1)
                assert len(workers_of(gateway.proc.pid)) == 2 and children[1] not in workers_of(gateway.proc.pid)
                await client(range(100, 110))
                await sink.wait_for(90, timeout=30)
            finally:
                code = await asyncio.to_thread(gateway.terminate, 30)
            assert code == 0
            assert workers_of(gateway.proc.pid) == []
            assert "Traceback" not in gateway.log()
    asyncio.run(main())


def test_orphaned_worker_queues_are_adopted(tmp_path):
    queue = tmp_path / "queue"
    (queue / "w3").mkdir(parents=True)
    (queue / "w3" / "m1.msg").write_bytes(b"x")
    (queue / "w3" / "m1.log").write_bytes(b"")
    assert adopt_orphans(str(tmp_path), 2) == 1
    assert sorted(p.name for p in (queue / "w1").iterdir()) == ["m1.log", "m1.msg"]
    assert list((queue / "w3").iterdir()) == []


def test_config_error_in_worker_mode_exits_78(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(make_config(tmp_path, 1, server="workers = 0"))
    result = subprocess.run(["python3", "-m", "gateway", "run", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 78 and "server.workers" in result.stderr
    assert re.search(r"must be at least 1", result.stderr)
