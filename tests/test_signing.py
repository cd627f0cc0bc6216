"""DKIM signing: every signature is checked by dkimpy's verifier against keys served by DnsServer."""
from __future__ import annotations

import asyncio
import base64
import os
import re
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any, Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway import spf
from gateway.config import Config, ConfigError, load
from gateway.signing import OVERSIGNED, Signer, canonical_body, load_keys, split_message
from gateway.testing.dns import DnsServer

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

CONFIG = """\
# test configuration
[server]
hostname = "gw.example.com"
spool_dir = "{tmp}/spool"
state = "sqlite:///{tmp}/state.db"

[[listener]]
address = "127.0.0.1:2525"
mode = "relay"
networks = ["127.0.0.0/8"]
account = "app"

[accounts.app]
domains = ["example.com"]

[delivery]
transport = "smarthost"
smarthost = "127.0.0.1:2526"
smarthost_tls = "none"
smarthost_insecure = true
egress_ips = ["192.0.2.10"]
dns_timeout = "1s"
"""

PLAIN = (b"From: App <app@example.com>\r\nTo: to@example.net\r\nSubject: hello\r\n"
         b"Message-ID: <m1@example.com>\r\nDate: Thu, 26 Nov 2026 07:00:00 +0000\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
         + b"Hello world, this is line after line of text.\r\n" * 90)


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def pem(key: PrivateKey, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def write_config(tmp_path: Path, *keys: tuple[str, bytes], extra: str = "", mode: int = 0o600) -> Path:
    """A config whose [dkim."example.com"] has one key per (selector, key bytes)."""
    text = CONFIG.format(tmp=tmp_path) + extra
    if keys:
        text += '\n[dkim."example.com"]\n'
    for index, (selector, data) in enumerate(keys):
        suffix = "2" if index else ""
        key_path = write_key(tmp_path / f"example.com.{selector}.pem", data, mode)
        text += f'selector{suffix} = "{selector}"\nkey_file{suffix} = "{key_path}"\n'
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def signer_for(tmp_path: Path, *keys: tuple[str, bytes]) -> Signer:
    return load_keys(load(str(write_config(tmp_path, *keys))))


def zone_for(signer: Signer, domain: str = "example.com") -> dict[str, dict[str, Any]]:
    return {name: {"TXT": [value]} for name, value in signer.public_key_record(domain)}


def dnsfunc(port: int) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc, asking the test DNS server (dnspython, no network)."""
    resolver = spf.Dns((("127.0.0.1", port),), timeout=2.0)

    def get_txt(name: bytes, timeout: int = 5) -> bytes | None:
        texts = resolver.query(name.decode("ascii").rstrip("."), "TXT")
        return texts[0].encode("ascii") if texts else None

    return get_txt


def signature_count(message: bytes) -> int:
    return len(re.findall(rb"(?im)^DKIM-Signature:", message.split(b"\r\n\r\n", 1)[0]))


async def verify_all(message: bytes, zone: dict[str, dict[str, Any]]) -> list[bool]:
    """dkimpy's verdict for each DKIM-Signature of ``message``, in order."""
    async with DnsServer(zone) as server:
        get_txt = dnsfunc(server.port)

        def one(index: int) -> bool:
            try:
                return bool(dkim.DKIM(message).verify(idx=index, dnsfunc=get_txt))
            except dkim.DKIMException:      # dkimpy raises for some failures (body hash mismatch)
                return False

        def run() -> list[bool]:
            return [one(i) for i in range(signature_count(message))]

        # dkimpy and dnspython block; the DNS server runs on this loop.
        return await asyncio.to_thread(run)


def tags(message: bytes, index: int = 0) -> dict[bytes, bytes]:
    headers = dkim.rfc822_parse(message)[0]
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]
    return dict(dkim.util.parse_tag_value(values[index]))


@pytest.fixture
def rsa_signer(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Signer:
    return signer_for(tmp_path, ("s1", pem(rsa_key)))


def multipart() -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "App <app@example.com>"
    msg["To"] = "to@example.net"
    msg["Subject"] = "Your invoice"
    msg["Message-ID"] = "<m2@example.com>"
    msg.set_content("Plain part\n")
    msg.add_alternative("<html><body><p>HTML part</p></body></html>\n", subtype="html")
    msg.add_attachment(os.urandom(3000), maintype="application", subtype="octet-stream", filename="a.bin")
    msg.add_attachment(b"col1,col2\n1,2\n", maintype="text", subtype="csv", filename="b.csv")
    return msg.as_bytes()


MESSAGES = {
    "plain": PLAIN,
    "html": PLAIN.replace(b"text/plain; charset=us-ascii", b"text/html; charset=utf-8").split(b"\r\n\r\n")[0]
    + b"\r\n\r\n<html><body><h1>Hi</h1>\r\n<p>Table&nbsp;below</p></body></html>\r\n",
    "multipart": multipart(),
    "8bit": PLAIN.replace(b"us-ascii", b"utf-8").replace(b"Hello world", "Grüße, 你好 — ünïcödé".encode())
    .replace(b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: 8bit\r\n"),
    "lf-only": PLAIN.replace(b"\r\n", b"\n"),
    "rfc2047-subject": PLAIN.replace(b"Subject: hello", b"Subject: =?utf-8?b?" + base64.b64encode(
        "Ünïcödé subject that is long enough to be folded by someone".encode()) + b"?=\r\n =?utf-8?q?_and_more?="),
    "no-trailing-newline": PLAIN.rstrip(b"\r\n"),
    "empty-body": PLAIN.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
async def test_signature_verifies(name: str, rsa_signer: Signer) -> None:
    signed = rsa_signer.sign(MESSAGES[name], "example.com")
    assert await verify_all(signed, zone_for(rsa_signer)) == [True]
    # The signed bytes are the bytes sent: CRLF everywhere, original message unchanged after them.
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert signed.endswith(MESSAGES[name].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


async def test_signature_tags(rsa_signer: Signer) -> None:
    signed = rsa_signer.sign(PLAIN, "example.com", now=1_700_000_000)
    fields = tags(signed)
    assert fields[b"a"] == b"rsa-sha256"
    assert fields[b"c"] == b"relaxed/relaxed"
    assert fields[b"d"] == b"example.com" and fields[b"s"] == b"s1"
    assert fields[b"t"] == b"1700000000"
    assert b"l" not in fields     # RFC 6376 §8.2
    signed_names = [n.strip() for n in re.sub(rb"\s+", b"", fields[b"h"]).split(b":")]
    for name in OVERSIGNED:
        present = len(re.findall(rb"(?im)^" + re.escape(name) + rb":", PLAIN))
        assert signed_names.count(name) == present + 1, name


async def test_list_unsubscribe_headers_are_oversigned(rsa_signer: Signer) -> None:
    message = PLAIN.replace(b"Subject: hello\r\n", b"Subject: hello\r\n"
                            b"List-Unsubscribe: <https://example.com/u/1>, <mailto:u@example.com>\r\n"
                            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    signed = rsa_signer.sign(message, "example.com")
    signed_names = re.sub(rb"\s+", b"", tags(signed)[b"h"]).split(b":")
    assert signed_names.count(b"list-unsubscribe") == 2
    assert signed_names.count(b"list-unsubscribe-post") == 2
    assert await verify_all(signed, zone_for(rsa_signer)) == [True]


async def test_dual_signature_rsa_and_ed25519(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                              ed_key: ed25519.Ed25519PrivateKey) -> None:
    signer = signer_for(tmp_path, ("s1", pem(rsa_key)), ("ed1", pem(ed_key)))
    assert [k.config.algorithm for k in signer.keys("example.com")] == ["rsa-sha256", "ed25519-sha256"]
    signed = signer.sign(MESSAGES["multipart"], "example.com")
    assert [tags(signed, i)[b"a"] for i in range(2)] == [b"rsa-sha256", b"ed25519-sha256"]
    assert await verify_all(signed, zone_for(signer)) == [True, True]
    records = dict(signer.public_key_record("example.com"))
    assert records["ed1._domainkey.example.com"].startswith("v=DKIM1; k=ed25519; p=")


async def test_key_formats(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    # PKCS#1 RSA ("BEGIN RSA PRIVATE KEY") and dkimpy's raw base64 Ed25519 seed (dknewkey).
    seed = ed_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    signer = signer_for(tmp_path, ("s1", pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)),
                        ("ed1", base64.b64encode(seed) + b"\n"))
    signed = signer.sign(PLAIN, "example.com")
    assert await verify_all(signed, zone_for(signer)) == [True, True]


def tamper(signed: bytes, old: bytes, new: bytes) -> bytes:
    assert old in signed
    return signed.replace(old, new, 1)


@pytest.mark.parametrize("change", [
    (b"Subject: hello", b"Subject: hellO"),
    (b"To: to@example.net", b"To: other@example.net"),
    (b"Hello world, this", b"Hello World, this"),
    (b"Date: Thu, 26 Nov 2026 07:00:00 +0000\r\n", b"Date: Thu, 26 Nov 2026 07:00:00 +0000\r\nReply-To: x@evil.test\r\n"),
    (b"Subject: hello\r\n", b"Subject: hello\r\nFrom: Evil <evil@example.com>\r\n"),
    (b"Subject: hello\r\n", b"Subject: hello\r\nSubject: urgent\r\n"),
    (b"Subject: hello\r\n", b"Subject: hello\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
], ids=["header", "to", "body", "add-reply-to", "second-from", "second-subject", "add-unsubscribe-post"])
async def test_tampering_fails(change: tuple[bytes, bytes], rsa_signer: Signer) -> None:
    signed = rsa_signer.sign(PLAIN, "example.com")
    assert await verify_all(tamper(signed, *change), zone_for(rsa_signer)) == [False]


async def test_relaxed_canonicalisation_survives_rewrapping(rsa_signer: Signer) -> None:
    signed = rsa_signer.sign(PLAIN, "example.com")
    rewrapped = tamper(tamper(signed, b"Subject: hello", b"subject:   hello  "), b"this is line", b"this  is line")
    assert await verify_all(rewrapped, zone_for(rsa_signer)) == [True]


async def test_concurrent_signing_from_threads(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                               ed_key: ed25519.Ed25519PrivateKey) -> None:
    signer = signer_for(tmp_path, ("s1", pem(rsa_key)), ("ed1", pem(ed_key)))
    bodies = [PLAIN.replace(b"Hello world", f"Message {i}".encode()) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        signed = list(pool.map(lambda m: signer.sign(m, "example.com"), bodies))
    for original, result in zip(bodies, signed):
        assert result.endswith(original)
        assert await verify_all(result, zone_for(signer)) == [True, True]


def test_private_key_operation_uses_openssl_and_leaves_dkimpy_alone(
        rsa_signer: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    def pure_python(*args: object) -> bytes:
        raise AssertionError("dkimpy's pure-Python RSA was called")

    original = dkim.RSASSA_PKCS1_v1_5_sign
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", pure_python)
    rsa_signer.sign(PLAIN, "example.com")
    monkeypatch.undo()
    assert dkim.RSASSA_PKCS1_v1_5_sign is original is dkim.crypto.RSASSA_PKCS1_v1_5_sign


def test_unknown_domain_and_can_sign(rsa_signer: Signer) -> None:
    assert rsa_signer.can_sign("example.com") and rsa_signer.can_sign("EXAMPLE.com.")
    assert not rsa_signer.can_sign("example.org")
    with pytest.raises(ValueError, match="no DKIM key for example.org"):
        rsa_signer.sign(PLAIN, "example.org")
    with pytest.raises(ValueError, match="cannot sign"):
        rsa_signer.sign(b"not a header line\r\n\r\nbody\r\n", "example.com")
    with pytest.raises(ValueError, match="no From header"):
        rsa_signer.sign(b"Subject: x\r\n\r\nbody\r\n", "example.com")


@pytest.mark.parametrize("body", [
    b"", b"\r\n", b"\r\n\r\n", b"a", b"a\r\n", b"a\r\n\r\n\r\n", b"a b\r\nc\r\n", b"a  b\r\n",
    b"a\tb\r\n", b"a \r\n", b"a\t\r\n \r\n", b" \r\n", b"x\r\n \r\n", b"a \rb\r\n",
])
def test_body_canonicalisation_matches_dkimpy(body: bytes) -> None:
    assert canonical_body(body) == dkim.canonicalization.Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("message", [PLAIN, MESSAGES["multipart"], b"From: a@example.com\r\n",
                                     b"From: a@example.com", b"From: a@example.com\r\n\r\n",
                                     b"\r\nbody\r\n", b"From: a\r\n \tfolded\r\n\r\n\r\nbody"])
def test_split_message_matches_dkimpy(message: bytes) -> None:
    head, body = split_message(message)
    assert (dkim.rfc822_parse(head)[0] if head else []) == dkim.rfc822_parse(message)[0]
    assert body == dkim.rfc822_parse(message)[1]


# -------------------------------------------------------------------------------------- key validation


def load_error(path: Path) -> str:
    config: Config = load(str(path))
    with pytest.raises(ConfigError) as info:
        load_keys(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f'{path}: dkim."example.com".key_file')
    return message


def test_group_readable_key_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    message = load_error(write_config(tmp_path, ("s1", pem(rsa_key)), mode=0o644))
    assert "mode 0644" in message and "chmod 600" in message
    assert "PRIVATE KEY" not in message


def test_small_rsa_key_is_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "1024 bits; at least 2048" in load_error(write_config(tmp_path, ("s1", pem(small))))


def test_garbage_key_is_refused(tmp_path: Path) -> None:
    garbage = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGdhcmJhZ2U=\n-----END PRIVATE KEY-----\n"
    message = load_error(write_config(tmp_path, ("s1", garbage)))
    assert "not a valid PEM private key" in message and "c2Vjcm" not in message
    assert "not a PEM private key" in load_error(write_config(tmp_path, ("s1", b"hello\n")))


def test_missing_key_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_config(tmp_path, ("s1", pem(rsa_key)))
    (tmp_path / "example.com.s1.pem").unlink()
    assert "No such file or directory" in load_error(path)


def test_second_key_errors_name_key_file2(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = write_config(tmp_path, ("s1", pem(rsa_key)), ("s2", b"junk"))
    with pytest.raises(ConfigError, match=r'dkim\."example\.com"\.key_file2: '):
        load_keys(load(str(path)))
    same = write_config(tmp_path, ("s1", pem(rsa_key)), ("s1", pem(rsa_key)))
    with pytest.raises(ConfigError, match=r"selector2: 's1' is already used"):
        load_keys(load(str(same)))


def test_relative_key_file_is_relative_to_the_working_directory(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    write_key(tmp_path / "rel.pem", pem(rsa_key))
    path = write_config(tmp_path, extra='\n[dkim."example.com"]\nselector = "s1"\nkey_file = "rel.pem"\n')
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert load_keys(load(str(path))).can_sign("example.com")
    finally:
        os.chdir(old)
