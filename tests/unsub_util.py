"""Helpers shared by the unsubscribe tests (end-to-end and browser)."""
from __future__ import annotations

import email
import email.message
import email.policy
import re
import socket
from pathlib import Path

import aiosmtplib

from gateway.testing import make_config

SECRET = "test-unsubscribe-secret-0123456789"
OLD_SECRET = "previous-unsubscribe-secret-9876543210"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unsub_config(tmp_path: Path, sink_port: int, http_port: int, *, plugin: str = "", accounts: str = "",
                 extra: str = "") -> str:
    """The test config with [http] on a known port (so the links in mail are reachable) and
    the plugin active."""
    return make_config(tmp_path, sink_port, accounts=accounts, extra=(
        f'[http]\naddress = "127.0.0.1:{http_port}"\npublic_url = "http://127.0.0.1:{http_port}"\n'
        f'admin_token = "t"\n[plugins.unsubscribe]\nsecret = "{SECRET}"\n{plugin}\n{extra}'))


def html_mail(*, subject: str = "News", headers: dict[str, str] | None = None, sender: str = "news@example.com",
              to: str = "to@example.net") -> bytes:
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content("Our news.\nVisit https://shop.example/deals\n")
    msg.add_alternative('<html><body><h1>News</h1><p><a href="https://shop.example/deals?a=1&amp;b=2">Deals</a> '
                        '<a href="mailto:help@example.com">Help</a></p></body></html>', subtype="html")
    return msg.as_bytes()


def text_mail(*, headers: dict[str, str] | None = None, sender: str = "news@example.com") -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"From: {sender}\r\nTo: to@example.net\r\nSubject: plain\r\n{extra}\r\nJust text, "
            "see https://shop.example/x\r\n").encode()


async def submit(host: str, port: int, data: bytes, recipients: list[str], sender: str = "news@example.com") -> None:
    async with aiosmtplib.SMTP(hostname=host, port=port) as client:
        await client.sendmail(sender, recipients, data)


def list_unsubscribe(data: bytes) -> tuple[str, str]:
    """(https URL, mailto address) from a delivered message's List-Unsubscribe."""
    value = email.message_from_bytes(data, policy=email.policy.compat32)["List-Unsubscribe"]
    https = re.search(r"<(https?://[^>]+)>", value)
    mailto = re.search(r"<mailto:([^>?]+)", value)
    assert https is not None, value
    return https.group(1), mailto.group(1) if mailto else ""


def parts(data: bytes) -> dict[str, str]:
    """Decoded text/plain and text/html of a delivered message."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    found: dict[str, str] = {}
    for part in msg.walk():
        if part.get_content_type() in ("text/plain", "text/html") and part.get_content_disposition() != "attachment":
            found[part.get_content_type()] = part.get_content()
    return found
