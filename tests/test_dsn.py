"""RFC 3464 delivery status notifications, read back with Python's email package."""
from __future__ import annotations

import email
import email.policy
import time

import pytest

from gateway.dsn import build_dsn, should_send_dsn
from gateway.transports.base import AttemptResult

HEADERS = (b"From: App <app@example.com>\r\nTo: to@example.net\r\nSubject: hello\r\n"
           b"Message-ID: <m1@example.com>\r\n")
ARRIVAL = 1_795_000_000.0


def build(failures: list[tuple[str, AttemptResult]], headers: bytes = HEADERS) -> bytes:
    return build_dsn(reporting_mta="gw.example.com", message_id="q123", sender="app@example.com",
                     failures=failures, original_headers=headers, arrival_time=ARRIVAL,
                     postmaster="postmaster@gw.example.com")


def parts(dsn: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    message = email.message_from_bytes(dsn, policy=email.policy.compat32)
    assert not message.defects
    payload = message.get_payload()
    assert isinstance(payload, list)
    return message, payload


def test_structure_and_fields():
    rejected = AttemptResult.from_reply(550, "5.1.1 No such user", remote_host="mx1.example.net")
    dsn = build([("to@example.net", rejected)])
    assert b"\n" not in dsn.replace(b"\r\n", b"")         # CRLF line endings only
    message, (text, status, headers) = parts(dsn)

    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@gw.example.com>"
    assert message["To"] == "<app@example.com>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"].endswith("@gw.example.com>")
    assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == pytest.approx(time.time(), abs=60)
    assert message["In-Reply-To"] == "<m1@example.com>"

    assert text.get_content_type() == "text/plain"
    body = text.get_payload(decode=True).decode()
    assert "to@example.net" in body and "550 5.1.1 No such user" in body and "postmaster@gw.example.com" in body

    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; gw.example.com"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL
    assert per_recipient["Final-Recipient"] == "rfc822; to@example.net"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx1.example.net"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"

    assert headers.get_content_type() == "text/rfc822-headers"
    assert headers.get_payload(decode=True) == HEADERS


def test_several_recipients_and_local_failures():
    failures = [
        ("a@nullmx.test", AttemptResult.bounced("5.1.10", "domain nullmx.test accepts no mail (null MX)", code=556)),
        ("b@gone.test", AttemptResult.bounced("5.1.2", "domain gone.test does not exist", code=0)),
        # A deferral that ran out of time: permanent status, the last reply kept.
        ("c@slow.test", AttemptResult.from_reply(451, "4.3.0 try later", remote_host="mx.slow.test")),
    ]
    _, (_, status, _) = parts(build(failures))
    _, first, second, third = status.get_payload()
    assert (first["Final-Recipient"], first["Status"]) == ("rfc822; a@nullmx.test", "5.1.10")
    assert "Remote-MTA" not in first
    assert second["Diagnostic-Code"] == "X-Gateway; domain gone.test does not exist"
    assert (third["Status"], third["Diagnostic-Code"]) == ("5.4.7", "smtp; 451 4.3.0 try later")


def test_remote_text_cannot_inject_fields():
    hostile = AttemptResult(status="bounced", code=550, enhanced="5.0.0",
                            text="no\r\nAction: delivered\r\n\r\nX: y", remote_host="mx\r\nStatus: 2.0.0")
    _, (_, status, _) = parts(build([("to@example.net", hostile)]))
    per_message, per_recipient = status.get_payload()
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.0.0"


def test_non_ascii_headers_keep_the_dsn_7bit():
    headers = "Subject: Grüße\r\nFrom: a@example.com\r\n".encode()
    dsn = build([("to@example.net", AttemptResult.bounced("5.1.1", "no"))], headers)
    assert dsn.isascii()
    _, (_, _, original) = parts(dsn)
    assert original.get_payload(decode=True) == headers


@pytest.mark.parametrize("sender, wanted", [
    ("", False), ("<>", False), ("MAILER-DAEMON@example.com", False), ("mailer-daemon", False),
    ("app@example.com", True), ("postmaster@example.com", True),
])
def test_should_send_dsn(sender, wanted):
    assert should_send_dsn(sender) is wanted
