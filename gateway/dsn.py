"""Delivery status notifications: the bounce mail sent to the envelope sender.

RFC 3464 (``message/delivery-status``) inside RFC 6522 ``multipart/report``: a text part for
people, the machine-readable status part, and the original headers (RET=HDRS is our only
mode: the body may be large and is the sender's own anyway). RFC 3834 ``Auto-Submitted``
marks it automatic; :func:`should_send_dsn` keeps a bounce from ever answering a bounce
(RFC 5321 §6.1, §4.5.5).
"""
from __future__ import annotations

import email.parser
import email.policy
import email.quoprimime
import email.utils
import re
import time
import uuid

from gateway.transports.base import AttemptResult

CRLF = "\r\n"
_DAEMONS = {"mailer-daemon", "mailer_daemon", "mailerdaemon", "double-bounce"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_FIELD = 900     # keep each field well inside the 998-octet line limit (RFC 5322 §2.1.1)


def should_send_dsn(sender: str) -> bool:
    """False for the null reverse-path and for mailer daemons: never a bounce for a bounce."""
    address = sender.strip().strip("<>").strip()
    if not address:
        return False
    local = address.rpartition("@")[0] if "@" in address else address
    return local.lower() not in _DAEMONS


def _clean(value: str) -> str:
    """One line of header-safe text (remote reply text is not trusted to be)."""
    return _CONTROL.sub(" ", value).strip()[:_MAX_FIELD]


def _date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


def _address_type(address: str) -> str:
    # RFC 6533 §3: non-ASCII (SMTPUTF8) addresses use the utf-8 address type.
    return "rfc822" if address.isascii() else "utf-8"


def _status(result: AttemptResult) -> str:
    # Action: failed requires a permanent status; a deferral that ran out of time is
    # RFC 3463 5.4.7 "delivery time expired" (its last reply stays in Diagnostic-Code).
    return result.enhanced if result.enhanced.startswith("5.") else "5.4.7"


def _recipient_fields(recipient: str, result: AttemptResult, now: float) -> list[str]:
    fields = [f"Final-Recipient: {_address_type(recipient)}; {_clean(recipient)}",
              "Action: failed",
              f"Status: {_status(result)}"]
    if result.remote_host:
        fields.append(f"Remote-MTA: dns; {_clean(result.remote_host)}")
    if result.code:
        fields.append(f"Diagnostic-Code: smtp; {_clean(f'{result.code} {result.enhanced} {result.text}')}")
    elif result.text:
        fields.append(f"Diagnostic-Code: X-Gateway; {_clean(result.text)}")
    fields.append(f"Last-Attempt-Date: {_date(now)}")
    return fields


def _headers_part(original_headers: bytes) -> tuple[str, str]:
    """(Content-Transfer-Encoding, body) for the text/rfc822-headers part, CRLF-terminated."""
    text = original_headers.replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip(b"\n")
    if text.isascii():
        return "7bit", text.decode("ascii").replace("\n", CRLF) + CRLF
    # Keep the DSN 7-bit so that it can reach any server (no 8BITMIME needed, RFC 6152):
    # latin-1 maps each byte to one character, which quoted-printable writes back as =XX.
    return "quoted-printable", email.quoprimime.body_encode(text.decode("latin-1"), eol=CRLF) + CRLF


def _original_message_id(original_headers: bytes) -> str | None:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(original_headers)
    value = parsed.get("Message-ID")
    if value is None:
        return None
    match = re.search(r"<[^<>\s]+>", str(value))
    return match.group(0) if match else None


def build_dsn(*, reporting_mta: str, message_id: str, sender: str, failures: list[tuple[str, AttemptResult]],
              original_headers: bytes, arrival_time: float, postmaster: str) -> bytes:
    """An RFC 3464 non-delivery report for ``failures`` (recipient, last result), CRLF line endings."""
    now = time.time()
    boundary = f"=_dsn_{uuid.uuid4().hex}"
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{_clean(sender)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {_date(now)}",
        f"Message-ID: {email.utils.make_msgid('dsn', domain=reporting_mta)}",
        "Auto-Submitted: auto-replied",     # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    original_id = _original_message_id(original_headers)
    if original_id:
        # Lets mail clients show the bounce next to the message it is about.
        headers += [f"In-Reply-To: {original_id}", f"References: {original_id}"]

    human = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It has been returned to you with this report; the message itself was not changed.",
        "",
        f"For further assistance, please contact <{postmaster}>.",
        "",
    ]
    for recipient, result in failures:
        human.append(_clean(f"<{recipient}>: {result.describe()}"))

    report = [f"Reporting-MTA: dns; {reporting_mta}",
              f"X-Gateway-Queue-ID: {_clean(message_id)}",
              f"Arrival-Date: {_date(arrival_time)}"]
    for recipient, result in failures:
        report.append("")           # RFC 3464 §2.1: a blank line before each recipient block
        report += _recipient_fields(recipient, result, now)
    # RFC 6533 §6: utf-8 address types belong in message/global-delivery-status.
    utf8 = not all(recipient.isascii() for recipient, _ in failures)
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    encoding, original = _headers_part(original_headers)

    lines = headers + [
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        f"Content-Type: {status_type}",
        "",
        *report,
        "",
        f"--{boundary}",
        "Content-Description: Undelivered message headers",
        "Content-Type: text/rfc822-headers",
        f"Content-Transfer-Encoding: {encoding}",
        "",
    ]
    # The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1): one more keeps
    # the header block's own final line ending.
    text = CRLF.join(lines) + CRLF + original + CRLF + f"--{boundary}--" + CRLF
    return text.encode("utf-8")
