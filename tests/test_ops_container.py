"""The container image without a container engine: the Containerfile's ENTRYPOINT + CMD run
as they would in the image (config from container/gateway.toml with its volumes pointed at
temporary directories), the HEALTHCHECK command passes against it, STOPSIGNAL drains it to
exit 0; and the Containerfile keeps the properties the issue asks for."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proc import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = (ROOT / "Containerfile").read_text()


def instruction(name: str) -> list[str]:
    """The JSON (exec form) argument of the last ``name`` instruction, continuation lines joined."""
    text = CONTAINERFILE.replace("\\\n", " ")
    values = re.findall(rf"^{name}\s+(.*)$", text, re.MULTILINE)
    assert values, name
    value = values[-1]
    if name == "HEALTHCHECK":
        value = value.split(" CMD ", 1)[1].strip()
    return json.loads(value)


def test_containerfile_shape():
    stages = re.findall(r"^FROM\s+(\S+)", CONTAINERFILE, re.MULTILINE)
    assert len(stages) == 2 and all("slim" in s for s in stages)
    final = CONTAINERFILE.split("\nFROM ")[-1]
    assert re.search(r"^USER ses-gateway", final, re.MULTILINE)
    assert "gcc" not in final and "build-essential" not in final and "pip install" not in final
    assert re.search(r'^VOLUME \["/var/spool/ses-gateway", "/var/lib/ses-gateway"\]', final, re.MULTILINE)
    assert re.search(r"^EXPOSE 25 587 465 8025$", final, re.MULTILINE)
    assert re.search(r"^STOPSIGNAL SIGTERM$", final, re.MULTILINE)
    assert "/etc/ses-gateway" in final and "/healthz" in " ".join(instruction("HEALTHCHECK"))
    ignored = (ROOT / ".containerignore").read_text().split()
    assert ".git" in ignored and "tests" in ignored


def test_entrypoint_starts_answers_healthcheck_and_stops(tmp_path):
    smtp_port, http_port = free_port(), free_port()
    config = (ROOT / "container" / "gateway.toml").read_text()
    config = (config.replace("/var/spool/ses-gateway", str(tmp_path / "spool"))
              .replace("/var/lib/ses-gateway", str(tmp_path / "lib"))
              .replace("0.0.0.0:25", f"127.0.0.1:{smtp_port}").replace("0.0.0.0:8025", f"127.0.0.1:{http_port}")
              .replace('transport = "mx"', 'transport = "mx"\ndns_nameservers = ["127.0.0.1:1"]'))
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(config)
    argv = [arg.replace("/etc/ses-gateway/gateway.toml", str(config_path)) for arg in instruction("ENTRYPOINT") + instruction("CMD")]
    assert argv[0] == "ses-gateway"
    # The image's PATH starts with the venv's bin; here the installed console script is used.
    env = {**os.environ, "SES_GATEWAY_ADMIN_TOKEN": "secret-token"}
    log = open(tmp_path / "entrypoint.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env, cwd=tmp_path)
    log.close()
    healthcheck = [sys.executable if arg == "python" else arg.replace(":8025/", f":{http_port}/")
                   for arg in instruction("HEALTHCHECK")]
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "entrypoint.log").read_text()
            if subprocess.run(healthcheck, capture_output=True, timeout=10).returncode == 0:
                break
            assert time.monotonic() < deadline, "HEALTHCHECK never passed: " + shlex.join(healthcheck)
            time.sleep(0.1)
        assert (tmp_path / "lib" / "dkim" / "example.com.s1.pem").exists()   # generated in the volume
        proc.send_signal(signal.SIGTERM)                                      # STOPSIGNAL
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = (tmp_path / "entrypoint.log").read_text()
    assert "Traceback" not in output and "secret-token" not in output
    assert json.loads(output.splitlines()[0])["event"]          # log_format = "json" for the engine's log driver
