"""Standard Webhooks 1.0 signatures (standard-webhooks/standard-webhooks spec, reliability.md §5).

Headers: ``webhook-id`` (stable across retries: the event id), ``webhook-timestamp`` (Unix
seconds of *this* attempt) and ``webhook-signature``: a space-separated list of
``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, one per active secret, so a
receiver keeps verifying while the account rotates its secret (``previous_secret``).
Secrets are written ``whsec_<base64 of 24–64 random bytes>``; the HMAC key is the decoded
bytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import Mapping

PREFIX = "whsec_"
TOLERANCE = 300          # seconds either side, the usual receiver tolerance


class SignatureError(ValueError):
    """A signature did not verify (or a header is missing or malformed)."""


def generate_secret(size: int = 32) -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(size)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; raises ValueError for anything else."""
    if not secret.startswith(PREFIX):
        raise ValueError("expected a secret of the form whsec_<base64>")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except binascii.Error:
        raise ValueError("the part after whsec_ is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the key must be 24 to 64 bytes, got {len(key)}")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(keys: list[bytes], msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers; no signature header when there is no key."""
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts)}
    if keys:
        headers["webhook-signature"] = " ".join(signature(key, msg_id, ts, body) for key in keys)
    return headers


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None,
           tolerance: int = TOLERANCE) -> None:
    """Receiver side: raise :class:`SignatureError` unless one ``v1`` signature matches and the
    timestamp is within ``tolerance`` seconds (replay protection)."""
    try:
        msg_id, ts_text, sigs = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
        timestamp = int(ts_text)
    except (KeyError, ValueError):
        raise SignatureError("missing or malformed webhook headers") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise SignatureError("timestamp outside the tolerance")
    expected = signature(secret_key(secret), msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, sig) for sig in sigs.split(" ")):
        raise SignatureError("no matching signature")
