"""Per-recipient body changes: the visible unsubscribe footer and open/click tracking.

The body is parsed with the :mod:`email` package under a synthetic header block holding
only the message's ``Content-Type`` and ``Content-Transfer-Encoding`` (the real header
fields are never re-generated, so they keep their exact bytes for DKIM and for the reader).
Text leaves that are not attachments are decoded, changed and re-encoded:

- ``text/plain``: the footer (a lead line and the unsubscribe URL) is appended;
- ``text/html``: ``href`` values of ``<a>``/``<area>`` with http(s) URLs are replaced by
  click-tracking URLs, then the footer link and the open pixel go before ``</body>``.

A leaf keeps its charset when the new text fits it, else becomes UTF-8; it keeps base64, and
otherwise becomes quoted-printable when the new text is not 7-bit clean — so an ASCII
message stays 7-bit. Anything the parser finds broken (missing boundaries) is left alone.
"""
from __future__ import annotations

import base64
import email.policy
import html
import quopri
import re
from dataclasses import dataclass
from email.message import Message as EmailMessage
from email.parser import BytesParser
from email.generator import BytesGenerator
from io import BytesIO
from typing import Callable

import structlog

from gateway.message import Message

log = structlog.get_logger("gateway.unsubscribe")

_POLICY = email.policy.compat32.clone(linesep="\r\n", max_line_length=0)
_HREF = re.compile(r"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.I | re.S)
_BODY_END = re.compile(r"</body\s*>", re.I)


@dataclass(frozen=True)
class Changes:
    """What to do to this copy; ``None`` fields are skipped."""

    text_footer: str | None = None          # appended to text/plain leaves
    html_footer: str | None = None          # inserted before </body> of text/html leaves
    pixel_url: str | None = None            # open pixel in text/html leaves
    click: Callable[[str], str] | None = None   # original URL → tracking URL
    keep_prefix: str = ""                   # URLs starting with this are ours: never rewritten

    @property
    def empty(self) -> bool:
        return not (self.text_footer or self.html_footer or self.pixel_url or self.click)


def has_html(message: Message) -> bool:
    """Cheap check on the top-level Content-Type: can this message have an HTML part?"""
    ctype = (message.get("content-type") or "text/plain").split(";")[0].strip().lower()
    return ctype == "text/html" or ctype.startswith("multipart/")


def rewrite_links(markup: str, click: Callable[[str], str], keep_prefix: str = "") -> str:
    def replace(match: re.Match[str]) -> str:
        raw = match.group(2) if match.group(2) is not None else match.group(3)
        url = html.unescape(raw).strip()
        if not url.lower().startswith(("http://", "https://")) or (keep_prefix and url.startswith(keep_prefix)):
            return match.group(0)
        return f'{match.group(1)}"{html.escape(click(url), quote=True)}"'
    return _HREF.sub(replace, markup)


def _before_body_end(markup: str, insert: str) -> str:
    ends = list(_BODY_END.finditer(markup))
    if not ends:
        return markup + insert
    at = ends[-1].start()
    return markup[:at] + insert + markup[at:]


def _decode(part: EmailMessage) -> tuple[str, str]:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        charset, text = "utf-8", data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n"), charset


def _encode(part: EmailMessage, text: str, charset: str) -> None:
    try:
        data = text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        charset, data = "utf-8", text.encode("utf-8")
        part.set_param("charset", charset)
    if part.get_param("charset") is None and not data.isascii():
        part.set_param("charset", charset)
    cte = str(part.get("content-transfer-encoding", "7bit")).strip().lower()
    if cte == "base64":
        payload = base64.encodebytes(data.replace(b"\n", b"\r\n")).decode("ascii")
    elif data.isascii() and cte in ("7bit", "8bit", "binary") and all(len(line) <= 998 for line in data.split(b"\n")):
        payload, cte = data.decode("ascii"), "7bit"
    else:
        payload, cte = quopri.encodestring(data).decode("ascii"), "quoted-printable"
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(payload)


def _change_leaf(part: EmailMessage, changes: Changes) -> bool:
    ctype = part.get_content_type()
    if part.get_content_disposition() == "attachment" or ctype not in ("text/plain", "text/html"):
        return False
    text, charset = _decode(part)
    if ctype == "text/plain":
        if not changes.text_footer:
            return False
        text = text.rstrip("\n") + "\n\n-- \n" + changes.text_footer + "\n"
    else:
        if changes.click is not None:
            text = rewrite_links(text, changes.click, changes.keep_prefix)
        insert = (changes.html_footer or "") + (
            f'<img src="{html.escape(changes.pixel_url)}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0" />' if changes.pixel_url else "")
        text = _before_body_end(text, insert)
    _encode(part, text, charset)
    return True


def apply(message: Message, changes: Changes) -> bool:
    """Change ``message``'s body in place; ``True`` when something changed."""
    if changes.empty:
        return False
    ctype = message.get("content-type") or "text/plain; charset=us-ascii"
    cte = message.get("content-transfer-encoding") or "7bit"
    head = f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode("utf-8")
    root = BytesParser(policy=_POLICY).parsebytes(head + message.body)
    if root.defects or any(part.defects for part in root.walk()):
        log.warning("body not changed: MIME structure is broken", defects=[type(d).__name__ for d in root.defects])
        return False
    changed = False
    for part in root.walk():
        if not part.is_multipart():
            changed |= _change_leaf(part, changes)
    if not changed:
        return False
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(root)
    data = out.getvalue()
    message.body = data[data.index(b"\r\n\r\n") + 4:]
    if not root.is_multipart():
        # A single-part message: its own header fields describe the new encoding.
        if (root.get("content-type") or "") != ctype or message.get("content-type") is None:
            message.set("Content-Type", str(root["Content-Type"]))
        message.set("Content-Transfer-Encoding", str(root["Content-Transfer-Encoding"]))
        if message.get("mime-version") is None:
            message.set("MIME-Version", "1.0")
    return True
