"""sd_notify with a real datagram socket as NOTIFY_SOCKET for a gateway subprocess:
READY=1 only once the listener accepts, STATUS= with the queue, WATCHDOG=1 at half of
WATCHDOG_USEC, RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP, a failed reload in
STATUS=, STOPPING=1 on SIGTERM, exit 0."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from ops_util import NotifySocket
from proc import free_port

from gateway.sdnotify import Notifier
from gateway.testing import make_config

pytestmark = pytest.mark.slow


def write_config(tmp_path, port: int, *, extra_limits: str = "") -> str:
    text = make_config(tmp_path, 1, limits=extra_limits).replace("127.0.0.1:0", f"127.0.0.1:{port}")
    (tmp_path / "gw.toml").write_text(text)
    return text


def test_notify_protocol_ready_watchdog_reload_stop(tmp_path):
    port = free_port()
    text = write_config(tmp_path, port)
    notify = NotifySocket()
    log = open(tmp_path / "gw.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(tmp_path / "gw.toml")],
                            stdout=log, stderr=log, env={**os.environ, **notify.env(watchdog_usec=300_000)})
    log.close()
    try:
        ready = notify.wait_for("READY", "1")
        # READY=1 means the listener accepts already.
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert ready["STATUS"].startswith("0 queued")
        # WATCHDOG=1 every WATCHDOG_USEC/2 = 150 ms, from the event loop.
        first = len(notify.messages)
        time.sleep(1.0)
        notify.drain()
        pings = sum(1 for m in notify.messages[first:] if m.get("WATCHDOG") == "1")
        assert 4 <= pings <= 9, pings

        mark = len(notify.messages)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1", after=mark)
        assert int(reloading["MONOTONIC_USEC"]) >= before
        after_reload = notify.wait_for("READY", "1", after=mark)
        assert "FAILED" not in after_reload["STATUS"]

        (tmp_path / "gw.toml").write_text(text.replace("[limits]", "[limits]\nmax_recipients = -3"))
        mark = len(notify.messages)
        proc.send_signal(signal.SIGHUP)
        failed = notify.wait_for("READY", "1", after=mark)
        assert "reload FAILED" in failed["STATUS"] and "max_recipients" in failed["STATUS"]
        socket.create_connection(("127.0.0.1", port), timeout=1).close()      # still serving

        mark = len(notify.messages)
        proc.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING", "1", after=mark)["STATUS"].startswith("draining")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.close()
    assert "Traceback" not in (tmp_path / "gw.log").read_text()


def test_notifier_path_socket_and_no_socket(tmp_path):
    path = str(tmp_path / "notify")
    receiver = NotifySocket(path)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"})
        assert notifier.watchdog_interval == 10.0
        assert notifier.send(STATUS="two\nlines", READY=1)
        assert receiver.wait_for("READY", "1") == {"STATUS": "two lines", "READY": "1"}
        notifier.close()
        # Not under systemd: nothing is sent, no watchdog.
        quiet = Notifier.from_env({})
        assert not quiet.ready("x") and quiet.watchdog_interval is None
        # WATCHDOG_PID names another process: the watchdog is not ours to ping.
        other = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
        assert other.watchdog_interval is None
        # A socket that went away is logged once, never raised.
        gone = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "missing")})
        assert not gone.watchdog() and not gone.watchdog()
        gone.close()
    finally:
        receiver.close()
