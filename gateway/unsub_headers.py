"""List-Unsubscribe (RFC 2369) and List-Unsubscribe-Post (RFC 8058) on one copy.

An app may set its own List-Unsubscribe. It is kept when it is well formed — one field,
a comma-separated list of ``<URI>`` whose schemes are only https or mailto, without control
characters or percent-encoded CR/LF — and replaced otherwise (reliability.md §8 row 37:
CRLF injection, ``javascript:`` or ``http:`` URIs). An app's List-Unsubscribe-Post is kept
only beside a kept List-Unsubscribe with exactly one https URI (RFC 8058 §3.1) and the exact
value ``List-Unsubscribe=One-Click``. Duplicates are never emitted.

Both fields are added before the core's DKIM signing, which lists and oversigns them in
``h=`` (RFC 8058 §4: the signature "MUST … cover at least the List-Unsubscribe and
List-Unsubscribe-Post headers").
"""
from __future__ import annotations

import re

from gateway.message import Message

ONE_CLICK = "List-Unsubscribe=One-Click"
_ENTRY = re.compile(r"\s*<([^<>\s]+)>\s*")
_BAD = re.compile(r"[\x00-\x1f\x7f]|%0[ad]|%00", re.I)


def parse_uris(value: str) -> list[str] | None:
    """The URIs of a List-Unsubscribe value, or ``None`` when it is malformed."""
    uris = []
    for item in value.split(","):
        match = _ENTRY.fullmatch(item)
        if match is None:
            return None
        uris.append(match.group(1))
    return uris or None


def acceptable(message: Message) -> bool:
    """Is the app's own List-Unsubscribe (there is one) fit to keep?"""
    values = message.get_all("list-unsubscribe")
    if len(values) != 1:
        return False
    raw = b"".join(raw for name, raw in message.fields if name == "list-unsubscribe")
    value = raw.split(b":", 1)[1].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").rstrip(b"\r\n")
    text = value.decode("utf-8", "replace")
    if _BAD.search(text):
        return False
    uris = parse_uris(text)
    return uris is not None and all(uri.lower().startswith(("https://", "mailto:")) for uri in uris)


def keep_existing(message: Message) -> bool:
    """``True`` when the app's own List-Unsubscribe stays (its -Post is dropped unless valid
    beside it); ``False`` when there is none or it is malformed and must be replaced."""
    if not message.count("list-unsubscribe") or not acceptable(message):
        return False
    uris = parse_uris(message.get("list-unsubscribe") or "") or []
    one_https = sum(uri.lower().startswith("https://") for uri in uris) == 1
    post = message.get_all("list-unsubscribe-post")
    if post and not (one_https and len(post) == 1 and post[0].strip() == ONE_CLICK):
        message.remove("list-unsubscribe-post")
    return True


def set_headers(message: Message, https_url: str, mailto: str | None) -> None:
    """Our fields, replacing any others: ``<https…>, <mailto…>`` and the one-click pair."""
    uris = [f"<{https_url}>"] + ([f"<mailto:{mailto}?subject=unsubscribe>"] if mailto else [])
    message.set("List-Unsubscribe", ", ".join(uris))
    message.set("List-Unsubscribe-Post", ONE_CLICK)
