"""Signed, stateless tokens for the unsubscribe, open and click URLs (issue 6).

A token carries its own claims — kind, recipient, sender domain, MessageId, expiry, page
language and (for clicks) the target link — as compact JSON, base64url-encoded, followed by
an HMAC-SHA256 over them (truncated to 128 bits, RFC 2104 §5 allows truncation to half the
hash length). Nothing is stored per token: any node holding the secret can check it.

Key rotation: tokens are made with the current secret and accepted with the current or the
previous one; both MACs are always computed and compared with :func:`hmac.compare_digest`,
so neither a forged token nor which key matched shows in the response time (reliability.md
§8 row 64). A forged, truncated or expired token decodes to ``None``; callers answer 404.

The mailto address cannot carry such a token: RFC 5321 §4.5.3.1.1 limits a local part to
64 octets (and the intake enforces it). :func:`mailto_id` is therefore a short, lower-case
base32 HMAC of (sender domain, recipient) — 24 characters, case-insensitive because some
MTAs fold local parts — that names a store entry written when the copy is prepared (see
:mod:`gateway.unsub_mailto`).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

KINDS = ("u", "o", "c")          # unsubscribe, open pixel, click
_VERSION = 1
_MAC_BYTES = 16
_CONTEXT = b"ses-gateway/unsubscribe-token/v1\0"
_MAILTO_CONTEXT = b"ses-gateway/unsubscribe-mailto/v1\0"
MAX_TOKEN_LENGTH = 8192          # a click token carries its link; anything longer is junk


@dataclass(frozen=True)
class Claims:
    kind: str                    # u | o | c
    recipient: str
    domain: str                  # sender domain the unsubscription applies to
    message_id: str              # the gateway's MessageId (status record key)
    expires: int                 # UNIX time
    lang: str = "2"              # X-SES-Unsubscribe language code ("2" = English)
    link: str = ""               # click target (kind "c" only)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT + payload, hashlib.sha256).digest()[:_MAC_BYTES]


class TokenCodec:
    """Makes and checks tokens with ``secrets[0]``; also accepts ``secrets[1:]`` (rotation)."""

    def __init__(self, secrets: tuple[bytes, ...]) -> None:
        if not secrets or not all(secrets):
            raise ValueError("at least one non-empty secret is required")
        self.secrets = secrets

    def encode(self, claims: Claims) -> str:
        if claims.kind not in KINDS:
            raise ValueError(f"unknown token kind {claims.kind!r}")
        fields: list[object] = [_VERSION, claims.kind, claims.recipient, claims.domain.lower(),
                                claims.message_id, int(claims.expires), claims.lang]
        if claims.kind == "c":
            fields.append(claims.link)
        payload = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return f"{_b64(payload)}.{_b64(_mac(self.secrets[0], payload))}"

    def decode(self, token: str, *, kind: str, now: float) -> Claims | None:
        """The claims of a genuine, unexpired token of ``kind``; ``None`` for anything else."""
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            return None
        body, _, mac_text = token.partition(".")
        try:
            payload, mac = _unb64(body), _unb64(mac_text)
        except (binascii.Error, ValueError):
            return None
        # Every key is tried, whatever matched first: the time taken does not depend on it.
        valid = False
        for secret in self.secrets:
            valid |= hmac.compare_digest(_mac(secret, payload), mac)
        if not valid:
            return None
        try:
            fields = json.loads(payload)
            version, token_kind, recipient, domain, message_id, expires, lang = fields[:7]
            link = fields[7] if token_kind == "c" else ""
        except (ValueError, TypeError):
            return None
        if version != _VERSION or token_kind != kind or not isinstance(expires, int) or expires < now:
            return None
        return Claims(token_kind, str(recipient), str(domain), str(message_id), expires, str(lang), str(link))


def mailto_id(secret: bytes, domain: str, recipient: str) -> str:
    """24 lower-case base32 characters (120 bits) naming (sender domain, recipient)."""
    digest = hmac.new(secret, _MAILTO_CONTEXT + f"{domain.lower()}\0{recipient.lower()}".encode("utf-8"),
                      hashlib.sha256).digest()[:15]
    return base64.b32encode(digest).decode("ascii").lower()


def mailto_id_valid(secrets: tuple[bytes, ...], ident: str, domain: str, recipient: str) -> bool:
    valid = False
    for secret in secrets:
        valid |= hmac.compare_digest(mailto_id(secret, domain, recipient).encode(), ident.lower().encode())
    return valid
