"""DKIM signing microbenchmark: signatures per second on one core, 4 KB message.

    python bench/dkim_sign.py [--seconds 2]

Compares gateway.signing (dkimpy canonicalisation + OpenSSL key operation) with dkimpy's own
signing (pure-Python RSA, PyNaCl Ed25519). The target is ≥ 1,000 RSA-2048 signatures/s.
"""
from __future__ import annotations

import argparse
import base64
import time
from typing import Callable

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.config import DkimKey
from gateway.signing import OVERSIGNED, LoadedKey, Signer

HEADER = (b"From: App <app@example.com>\r\nTo: Someone <to@example.net>\r\nSubject: Your weekly report\r\n"
          b"Message-ID: <bench@example.com>\r\nDate: Thu, 26 Nov 2026 07:00:00 +0000\r\n"
          b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
          b"List-Unsubscribe: <https://example.com/u/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n")
LINE = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghij.\r\n"
MESSAGE = HEADER + LINE * ((4096 - len(HEADER)) // len(LINE))


def rate(function: Callable[[], object], seconds: float) -> float:
    function()      # warm up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            function()
        count += 10
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row (default 2)")
    args = parser.parse_args()

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_loaded = LoadedKey(DkimKey("example.com", "s1", "-", "rsa-sha256"), rsa_key)
    ed_loaded = LoadedKey(DkimKey("example.com", "ed1", "-", "ed25519-sha256"), ed_key)
    rsa_pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    ed_seed = ed_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
    ed_b64 = base64.b64encode(ed_seed)
    headers = list(OVERSIGNED) + list(OVERSIGNED)   # the same work as the gateway's oversigning

    def dkimpy(key: bytes, algorithm: bytes) -> Callable[[], object]:
        return lambda: dkim.sign(MESSAGE, b"s1", b"example.com", key, signature_algorithm=algorithm,
                                 canonicalize=(b"relaxed", b"relaxed"), include_headers=headers)

    rows: list[tuple[str, Callable[[], object]]] = [
        ("gateway RSA-2048 (OpenSSL)", lambda: Signer({"example.com": (rsa_loaded,)}).sign(MESSAGE, "example.com")),
        ("gateway Ed25519 (OpenSSL)", lambda: Signer({"example.com": (ed_loaded,)}).sign(MESSAGE, "example.com")),
        ("gateway RSA-2048 + Ed25519 (dual: messages/s)",
         lambda: Signer({"example.com": (rsa_loaded, ed_loaded)}).sign(MESSAGE, "example.com")),
        ("dkimpy RSA-2048 (pure Python)", dkimpy(rsa_pem, b"rsa-sha256")),
        ("dkimpy Ed25519 (PyNaCl)", dkimpy(ed_b64, b"ed25519-sha256")),
    ]
    print(f"DKIM signing, {len(MESSAGE)}-byte message, one thread (= one core)")
    print(f"{'signer':<48} {'sig/s':>9} {'ms/sig':>8}")
    for name, function in rows:
        per_second = rate(function, args.seconds)
        print(f"{name:<48} {per_second:>9,.0f} {1000 / per_second:>8.3f}")


if __name__ == "__main__":
    main()
