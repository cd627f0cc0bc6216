from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from gateway.testing import SinkServer

sys.path.insert(0, os.path.dirname(__file__))

MESSAGE = (b"From: App <app@example.com>\r\nTo: to@example.net\r\nSubject: hello\r\n"
           b"Message-ID: <m1@example.com>\r\nDate: Thu, 26 Nov 2026 07:00:00 +0000\r\n\r\nHello world\r\n")


@pytest.fixture
async def sink():
    async with SinkServer() as server:
        yield server


def queued_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool" / "queue").glob("*/*.msg"))


@pytest.fixture
def message() -> bytes:
    return MESSAGE
