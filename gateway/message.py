"""A message over bytes: a list of raw header fields plus the body, nothing decoded.

Only the header block is parsed (reliability.md §2.6: no body parsing on the hot path).
Header fields keep their exact bytes, so a message that nobody changes is sent as received.
Lines are CRLF-terminated (the intake normalises line endings before this point).
"""
from __future__ import annotations

from email.header import decode_header, make_header
from typing import Iterator

CRLF = b"\r\n"


class MessageFormatError(ValueError):
    """The header block is malformed (a line without a colon, an 8-bit field name, …)."""


def _name_ok(name: bytes) -> bool:
    # RFC 5322 §3.6.8: field-name = 1*ftext, printable US-ASCII except ":".
    return bool(name) and all(33 <= b <= 126 and b != 58 for b in name)


class Message:
    __slots__ = ("fields", "body")

    def __init__(self, fields: list[tuple[str, bytes]], body: bytes) -> None:
        self.fields = fields        # (lower-case name, raw field bytes incl. CRLF)
        self.body = body            # everything after the blank line (may be b"")

    @classmethod
    def parse(cls, raw: bytes) -> "Message":
        if raw.startswith(CRLF):
            return cls([], raw[2:])
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            head, body = raw, b""
            if head and not head.endswith(CRLF):
                head += CRLF
        else:
            head, body = raw[: end + 2], raw[end + 4 :]
        fields: list[tuple[str, bytes]] = []
        for line in head.split(CRLF)[:-1]:
            if line[:1] in (b" ", b"\t"):
                if not fields:
                    raise MessageFormatError("continuation line before the first header")
                name, prev = fields[-1]
                fields[-1] = (name, prev + line + CRLF)
                continue
            colon = line.find(b":")
            if colon <= 0:
                raise MessageFormatError("header line without a colon")
            field_name = line[:colon].rstrip(b" \t")  # obs-fname allows WSP before the colon (RFC 5322 §4.5)
            if not _name_ok(field_name):
                raise MessageFormatError("invalid header field name")
            fields.append((field_name.decode("ascii").lower(), line + CRLF))
        return cls(fields, body)

    # -- reading -------------------------------------------------------------------------
    def _value(self, raw: bytes) -> str:
        value = raw.split(b":", 1)[1]
        # Unfold (RFC 5322 §2.2.3) and decode 8-bit as UTF-8 (RFC 6532), never fail.
        return value.replace(b"\r\n", b"").strip().decode("utf-8", "replace")

    def get(self, name: str) -> str | None:
        name = name.lower()
        for field_name, raw in self.fields:
            if field_name == name:
                return self._value(raw)
        return None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [self._value(raw) for field_name, raw in self.fields if field_name == name]

    def count(self, name: str) -> int:
        name = name.lower()
        return sum(1 for field_name, _ in self.fields if field_name == name)

    def get_decoded(self, name: str) -> str | None:
        """The value with RFC 2047 encoded-words decoded (for subjects, X-SES-* values)."""
        value = self.get(name)
        if value is None:
            return None
        try:
            return str(make_header(decode_header(value)))
        except (UnicodeError, LookupError, ValueError):
            return value

    def names(self) -> Iterator[str]:
        return (name for name, _ in self.fields)

    @property
    def header_size(self) -> int:
        return sum(len(raw) for _, raw in self.fields)

    # -- changing ------------------------------------------------------------------------
    @staticmethod
    def _field(name: str, value: str) -> bytes:
        if any(c in value for c in "\r\n\0") or any(c in name for c in ":\r\n\0 "):
            raise ValueError("header name/value must not contain CR, LF or NUL")
        return f"{name}: {value}".encode("utf-8") + CRLF

    def add(self, name: str, value: str, *, prepend: bool = False) -> None:
        item = (name.lower(), self._field(name, value))
        if prepend:
            self.fields.insert(0, item)
        else:
            self.fields.append(item)

    def remove(self, name: str) -> int:
        name = name.lower()
        before = len(self.fields)
        self.fields = [f for f in self.fields if f[0] != name]
        return before - len(self.fields)

    def remove_prefix(self, prefix: str) -> int:
        prefix = prefix.lower()
        before = len(self.fields)
        self.fields = [f for f in self.fields if not f[0].startswith(prefix)]
        return before - len(self.fields)

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` field with one, at the first one's place (else appended)."""
        lower = name.lower()
        new = (lower, self._field(name, value))
        out: list[tuple[str, bytes]] = []
        placed = False
        for item in self.fields:
            if item[0] == lower:
                if not placed:
                    out.append(new)
                    placed = True
                continue
            out.append(item)
        if not placed:
            out.append(new)
        self.fields = out

    def copy(self) -> "Message":
        return Message(list(self.fields), self.body)

    def as_bytes(self) -> bytes:
        return b"".join(raw for _, raw in self.fields) + CRLF + self.body
