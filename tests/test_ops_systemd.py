"""The systemd unit: `systemd-analyze verify` passes, the settings the runbook relies on are
there, and the gateway runs under MemoryDenyWriteExecute's rule (prctl PR_SET_MDWE, the same
W^X refusal) while signing DKIM with cryptography/OpenSSL."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import aiosmtplib
import pytest
from proc import free_port

from gateway.testing import SinkServer, make_config
from gateway.units import parse_duration

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "ses-gateway.service"
INSTALLED = "/opt/ses-gateway/bin/ses-gateway"


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian package systemd) missing")
def test_systemd_analyze_verify_passes(tmp_path):
    # verify wants ExecStart's binary to exist: point it at this environment's ses-gateway.
    binary = shutil.which("ses-gateway") or pytest.fail("ses-gateway is not installed")
    unit = tmp_path / "ses-gateway.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, binary))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ses-gateway" not in result.stderr, result.stderr


def test_unit_has_what_the_runbook_needs():
    unit = settings()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"] and unit["RestartPreventExitStatus"] == ["78"]
    assert parse_duration(unit["WatchdogSec"][0]) >= 10
    # The drain is shutdown_grace (default 30 s) twice over; stop timeout must exceed it.
    assert parse_duration(unit["TimeoutStopSec"][0]) > 2 * parse_duration("30s")
    assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"] == unit["CapabilityBoundingSet"]
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert unit["SystemCallFilter"] == ["@system-service"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    assert "ses-gateway" in unit["StateDirectory"][0] and unit["User"] == ["ses-gateway"]
    assert all(line.startswith(INSTALLED) for line in unit["ExecStart"] + unit["ExecStartPre"])
    assert (ROOT / "systemd" / "sysusers.d" / "ses-gateway.conf").read_text().count("u ses-gateway") == 1


MDWE_RUNNER = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0 or libc.prctl(66, 0, 0, 0, 0) != 1:   # PR_SET_MDWE / PR_GET_MDWE
    sys.exit(99)
import mmap
try:                                     # the rule holds: no new executable anonymous mapping
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(98)
except PermissionError:
    pass
import nacl.signing                      # dkimpy's ed25519 path (cffi)
key = nacl.signing.SigningKey.generate()
key.verify_key.verify(key.sign(b"x"))
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _mdwe_supported() -> bool:
    out = subprocess.run([sys.executable, "-c", "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(66,0,0,0,0) < 0)"])
    return out.returncode == 0


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
async def test_gateway_runs_and_signs_under_memory_deny_write_execute(tmp_path, message):
    import asyncio

    from proc import GatewayProcess

    async with SinkServer() as sink:
        port = free_port()
        path = tmp_path / "gw.toml"
        path.write_text(make_config(tmp_path, sink.port).replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        gateway = GatewayProcess(path, port)
        runner = tmp_path / "mdwe.py"
        runner.write_text(MDWE_RUNNER)
        log = open(gateway.log_path, "ab")
        gateway.proc = subprocess.Popen([sys.executable, str(runner), "run", "-c", str(path)], stdout=log, stderr=log)
        log.close()
        try:
            for _ in range(200):
                assert gateway.proc.poll() is None, gateway.log()
                try:
                    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5) as smtp:
                        await smtp.sendmail("app@example.com", ["to@example.net"], message)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            received = await sink.wait_for(1)
            assert b"DKIM-Signature:" in received[0].data and b"a=ed25519-sha256" in received[0].data
            assert await asyncio.to_thread(gateway.terminate) == 0
        finally:
            if gateway.proc.poll() is None:
                gateway.kill()
