"""Content checks and repairs at end of DATA, the way Postfix's cleanup(8) does them.

Runs on the raw bytes the intake read (dot-unstuffed, CRLF or bare-LF), before plugins see
the message: line-ending policy, NUL bytes, header syntax and size, From count, hop count,
missing Message-ID/Date, Bcc stripping, and over-long lines. Returns the clean message or
the reply to send (reliability.md §8 rows 1-5, 8, 27, 29-34).
"""
from __future__ import annotations

import email.utils
import quopri
import re
import time
from dataclasses import dataclass

from gateway import replies
from gateway.message import Message, MessageFormatError
from gateway.replies import SmtpReply

_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")


@dataclass(frozen=True)
class CleanupPolicy:
    hostname: str
    bare_lf: str                 # normalize | reject
    text_line_length: int        # 998 by RFC 5322 §2.1.1
    max_header_size: int
    max_received_headers: int


def normalise_line_endings(raw: bytes, policy: CleanupPolicy) -> bytes | SmtpReply:
    """Bare LF / bare CR: normalise to CRLF (legacy clients on relay listeners, Postfix's
    ``smtpd_forbid_bare_newline = normalize``) or refuse with ``550 5.5.2`` — never relay
    them, that is how SMTP smuggling crosses servers (reliability.md §2.1)."""
    has_cr = b"\r" in raw
    if not has_cr:
        if b"\n" not in raw:
            return raw
        if policy.bare_lf == "reject":
            return replies.S550_BARE_LF
        return raw.replace(b"\n", b"\r\n")
    if _BARE_LF.search(raw):
        if policy.bare_lf == "reject":
            return replies.S550_BARE_LF
        raw = _BARE_LF.sub(b"\r\n", raw)
    if _BARE_CR.search(raw):
        if policy.bare_lf == "reject":
            return replies.S550_BARE_CR
        raw = _BARE_CR.sub(b"\r\n", raw)
    return raw


def clean(raw: bytes, policy: CleanupPolicy, *, message_id_domain: str) -> Message | SmtpReply:
    if b"\0" in raw:
        return replies.S554_NUL
    normalised = normalise_line_endings(raw, policy)
    if isinstance(normalised, SmtpReply):
        return normalised
    # Remove dot-stuffing (RFC 5321 §4.5.2) after line endings are CRLF, so a legacy client's
    # bare-LF lines are unstuffed like Postfix's "normalize" mode does.
    if b"\r\n.." in normalised or normalised.startswith(b".."):
        normalised = (b"\r\n" + normalised).replace(b"\r\n..", b"\r\n.")[2:]
    try:
        message = Message.parse(normalised)
    except MessageFormatError:
        return replies.S554_BAD_HEADER
    if message.header_size > policy.max_header_size:
        return replies.S552_HEADER_TOO_BIG
    for _, field in message.fields:
        if any(len(line) > policy.text_line_length for line in field.split(b"\r\n")):
            return replies.S552_HEADER_TOO_BIG
    if message.count("from") != 1:
        return replies.S550_FROM_HEADER
    if message.count("received") > policy.max_received_headers:
        return replies.S554_TOO_MANY_HOPS
    # Gmail refuses mail without Message-ID; Postfix cleanup adds Message-ID and Date.
    if message.count("message-id") == 0:
        message.add("Message-ID", email.utils.make_msgid(domain=message_id_domain))
    if message.count("date") == 0:
        message.add("Date", email.utils.formatdate(time.time(), localtime=False))
    # Bcc must never reach recipients (RFC 5322 §3.6.3); Postfix cleanup strips it too.
    message.remove("bcc")
    message.remove("resent-bcc")
    if _has_long_lines(message.body, policy.text_line_length):
        message = reencode_long_lines(message)
    return message


def _has_long_lines(body: bytes, limit: int) -> bool:
    if len(body) <= limit:
        return False
    start = 0
    length = len(body)
    while start < length:
        end = body.find(b"\r\n", start)
        if end < 0:
            end = length
        if end - start > limit:
            return True
        start = end + 2
    return False


def reencode_long_lines(message: Message) -> Message:
    """Lines over 998 octets may not be relayed (RFC 5321 §4.5.3.1.6): re-encode the body of a
    single-part message as quoted-printable; a multipart body is re-encoded part by part."""
    from email import policy as email_policy
    from email.parser import BytesParser

    parsed = BytesParser(policy=email_policy.compat32).parsebytes(message.as_bytes())
    for part in parsed.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if not any(len(line) > 998 for line in payload.split(b"\n")):
            cte = (part.get("Content-Transfer-Encoding") or "").lower()
            if cte not in ("", "7bit", "8bit", "binary"):
                continue
            raw_payload = part.get_payload()
            if isinstance(raw_payload, str) and not any(len(line) > 998 for line in raw_payload.split("\n")):
                continue
        encoded = quopri.encodestring(payload).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        del part["Content-Transfer-Encoding"]
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(encoded.decode("ascii"))
    out = parsed.as_bytes(policy=email_policy.compat32.clone(linesep="\r\n"))
    return Message.parse(out)
