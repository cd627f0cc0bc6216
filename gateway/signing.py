"""DKIM signing (RFC 6376, RFC 8463) for the domains that have keys in ``[dkim."domain"]``.

dkimpy does the parsing, canonicalisation and header formatting; the private-key operation is
done by ``cryptography`` (OpenSSL), because dkimpy's RSA is pure Python and about ten times
slower. Keys are read, checked and parsed once, by :func:`load_keys`; :meth:`Signer.sign` only
reads shared state, so it may be called from many threads at once.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, correct_empty_body, strip_trailing_lines

from gateway.config import Config, ConfigError, DkimKey

MIN_RSA_BITS = 2048

# Signed once more than they occur (RFC 6376 §5.4.2, §8.15): a second From, Subject, …
# added in transit then breaks the signature instead of being shown to the reader.
# List-Unsubscribe-Post is missing from dkimpy's defaults, but RFC 8058 §4 requires it signed.
OVERSIGNED: tuple[bytes, ...] = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
    b"content-type", b"list-unsubscribe", b"list-unsubscribe-post",
)
# Also signed when present (RFC 6376 §5.4.1's list), but not frozen: mailing lists may add them.
SIGNED_IF_PRESENT: tuple[bytes, ...] = (
    b"sender", b"content-transfer-encoding", b"content-id", b"content-description",
    b"in-reply-to", b"references", b"list-id", b"list-help", b"list-subscribe", b"list-post",
    b"list-owner", b"list-archive", b"resent-date", b"resent-from", b"resent-sender",
    b"resent-to", b"resent-cc", b"resent-message-id",
)
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_PKCS1 = padding.PKCS1v15()
_PREHASHED = utils.Prehashed(hashes.SHA256())


@dataclass(frozen=True)
class LoadedKey:
    """One parsed private key; ``config`` carries the detected algorithm."""

    config: DkimKey
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = dataclasses.field(repr=False)

    @property
    def algorithm(self) -> bytes:
        return self.config.algorithm.encode("ascii")

    def sign_digest(self, digest: bytes) -> bytes:
        """The b= value for a SHA-256 digest of the canonicalised header fields."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            # RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 over SHA-256; the digest is already computed.
            return self.private_key.sign(digest, _PKCS1, _PREHASHED)
        # RFC 8463 §3: PureEdDSA over the SHA-256 digest (not over the headers themselves).
        return self.private_key.sign(digest)

    def dns_value(self) -> str:
        return public_key_value(self.private_key)

    def dns_name(self) -> str:
        return f"{self.config.selector}._domainkey.{self.config.domain}"


def public_key_value(private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The DKIM key record's text (RFC 6376 §3.6.1; RFC 8463 §4.2 for Ed25519)."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def parse_private_key(data: bytes) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """PEM (PKCS#1 or PKCS#8) RSA/Ed25519, or dkimpy's raw base64 Ed25519 seed.

    Raises ValueError with a reason that never quotes the key material.
    """
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ValueError("the key is encrypted; a passphrase cannot be given unattended") from None
        except (ValueError, UnsupportedAlgorithm):
            raise ValueError("not a valid PEM private key") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < MIN_RSA_BITS:
                # RFC 8301 §3.2: verifiers must not accept RSA keys under 1024 bits;
                # 2048 is the size RFC 8301 recommends signers use.
                raise ValueError(f"RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required")
            return key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key
        raise ValueError("unsupported key type; use RSA or Ed25519")
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise ValueError("not a PEM private key nor a base64 Ed25519 key")
    # dkimpy's dknewkey writes the 32-byte Ed25519 seed in base64 (RFC 8032 §5.1.5).
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def _algorithm(private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return "rsa-sha256" if isinstance(private_key, rsa.RSAPrivateKey) else "ed25519-sha256"


def _key_path(config: Config, key_file: str) -> Path:
    # Relative paths in the configuration (spool, state, keys) all resolve against the
    # working directory; `dkim keygen` writes absolute paths.
    return Path(key_file)


def write_private_key(path: Path, private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> None:
    """Write a key as PKCS#8 PEM, 0600 from the first byte, never overwriting: FileExistsError
    when ``path`` exists. Written aside and published with link(), so a reader never sees a
    half-written key and of two processes writing at once exactly one wins."""
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)
    finally:
        os.unlink(temp)


def new_private_key(key_type: str = "rsa") -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """A fresh RSA-2048 (RFC 8301: at least 2048 bits for signing) or Ed25519 (RFC 8463) key."""
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def generate_key(path: Path, key_type: str = "rsa") -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """A new key at ``path`` (if another process got there first, its key stays)."""
    private_key = new_private_key(key_type)
    try:
        write_private_key(path, private_key)
    except FileExistsError:
        pass
    return private_key


def read_key_file(path: Path) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """Check the file's mode and parse it; ValueError with a one-line reason."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return parse_private_key(data)


def load_keys(config: Config) -> "Signer":
    """Read every ``[dkim]`` key once; raise ConfigError naming the config key on any problem."""
    keys: dict[str, tuple[LoadedKey, ...]] = {}
    for domain, entries in config.dkim.items():
        loaded = []
        selectors: set[str] = set()
        for index, entry in enumerate(entries):
            suffix = "2" if index else ""
            where = f'{config.path}: dkim."{domain}"'
            if entry.selector in selectors:
                # Both keys would have to be published at the same DNS name.
                raise ConfigError(f"{where}.selector{suffix}: {entry.selector!r} is already used by the first key")
            selectors.add(entry.selector)
            key_path = _key_path(config, entry.key_file)
            try:
                if entry.generate and not key_path.exists():
                    # `generate = true`: a first start on a fresh machine creates the key;
                    # the TXT record to publish is printed by `ses-gateway dkim dns`.
                    generate_key(key_path)
                private_key = read_key_file(key_path)
            except (ValueError, OSError) as exc:
                raise ConfigError(f"{where}.key_file{suffix}: {exc}") from None
            detected = dataclasses.replace(entry, algorithm=_algorithm(private_key))
            loaded.append(LoadedKey(detected, private_key))
        keys[domain.lower()] = tuple(loaded)
    return Signer(keys)


class _OpenSSLDKIM(dkim.DKIM):
    """dkimpy's message parser, canonicaliser and header folding with an OpenSSL key.

    Only :meth:`gen_header` is replaced (its private-key step called dkimpy's pure-Python
    RSA through a module global); dkimpy's verifier and the ``dkim`` module are untouched.
    One instance per message: dkimpy keeps per-signature state on the instance.
    """

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Sequence[bytes],
                   canon_policy: Any, header_name: bytes, pk: LoadedKey, standardize: bool = False) -> bytes:
        # Same steps as dkimpy's DomainSigner.gen_header (RFC 6376 §3.7): hash the selected
        # header fields plus this signature with an empty b=, then fill b= and fold.
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        hasher = hashlib.sha256()
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(
            hasher, canon_policy, headers, include_headers, (header_name, b" " + header_value), dict(fields))
        signature = pk.sign_digest(hasher.digest())
        fields = [(b"b", base64.b64encode(signature)) if name == b"b" else (name, value) for name, value in fields]
        header_value = b"; ".join(b"=".join(x) for x in fields) + b"\r\n"
        folded: bytes = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        return folded

    def sign_with(self, key: LoadedKey, include_headers: tuple[bytes, ...], body_hash: bytes, now: int) -> bytes:
        self.signature_algorithm = key.algorithm
        domain = key.config.domain.encode("ascii")
        selector = key.config.selector.encode("ascii")
        # No l= (RFC 6376 §8.2: it lets anyone append content), no i= (defaults to @d).
        fields = [
            (b"v", b"1"),
            (b"a", key.algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", domain),
            (b"q", b"dns/txt"),
            (b"s", selector),
            (b"t", str(now).encode("ascii")),
            (b"h", b" : ".join(include_headers)),
            (b"bh", body_hash),
            # A placeholder as long as a signature puts b= on its own folded lines, so filling
            # it in cannot change how the tags before it were folded (as dkimpy does).
            (b"b", b"0" * 60),
        ]
        return b"DKIM-Signature: " + self.gen_header(fields, include_headers, _RELAXED, b"DKIM-Signature", key)


def to_crlf(data: bytes) -> bytes:
    """Bare LF → CRLF, so the bytes signed are the bytes sent (RFC 5321 §2.3.8)."""
    if b"\n" not in data.replace(b"\r\n", b""):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header section with its final CRLF, body) of a CRLF message (RFC 5322 §2.1)."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[:end + 2], message[end + 4:]


def canonical_body(body: bytes) -> bytes:
    """The relaxed body canonicalisation (RFC 6376 §3.4.4), as dkimpy computes it.

    dkimpy's two whitespace regexes cost more than the rest of signing; they can only change
    a body that has a tab, two spaces in a row or a space before CRLF, so skip them otherwise.
    """
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        canonical: bytes = _RELAXED.canonicalize_body(body)
        return canonical
    # Only §3.4.4 "ignore all empty lines at the end of the message body" can apply.
    result: bytes = correct_empty_body(strip_trailing_lines(body))
    return result


def signed_header_list(headers: Sequence[Sequence[bytes]]) -> tuple[bytes, ...]:
    """h= for these header fields: oversigned names n+1 times, the others n times."""
    counts: dict[bytes, int] = {}
    for name, _value in headers:
        lower = name.lower()
        counts[lower] = counts.get(lower, 0) + 1
    names: list[bytes] = []
    for name in OVERSIGNED:
        names.extend([name] * (counts.get(name, 0) + 1))
    for name in SIGNED_IF_PRESENT:
        names.extend([name] * counts.get(name, 0))
    return tuple(names)


class Signer:
    """The loaded keys of every signing domain. Immutable after construction: thread-safe."""

    def __init__(self, keys: Mapping[str, tuple[LoadedKey, ...]]) -> None:
        self._keys = dict(keys)

    def can_sign(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self._keys

    def keys(self, domain: str) -> tuple[LoadedKey, ...]:
        return self._keys.get(domain.lower().rstrip("."), ())

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def public_key_record(self, domain: str) -> list[tuple[str, str]]:
        """(DNS name, TXT value) for each key of ``domain``."""
        return [(key.dns_name(), key.dns_value()) for key in self.keys(domain)]

    def sign(self, data: bytes, domain: str, *, now: int | None = None) -> bytes:
        """The message in CRLF form with one DKIM-Signature per key of ``domain`` prepended.

        Raises ValueError when ``domain`` has no key or the header section cannot be parsed.
        """
        keys = self.keys(domain)
        if not keys:
            raise ValueError(f"no DKIM key for {domain}")
        message = to_crlf(data)
        head, body = split_message(message)
        try:
            # dkimpy parses only the header section: the body is hashed here, once.
            signer = _OpenSSLDKIM(head)
        except dkim.MessageFormatError as exc:
            raise ValueError(f"cannot sign: {exc}") from None
        if not any(name.lower() == b"from" for name, _value in signer.headers):
            raise ValueError("cannot sign: no From header field (RFC 6376 §5.4)")
        include_headers = signed_header_list(signer.headers)
        # Both supported algorithms hash with SHA-256, so the body hash is shared (RFC 6376 §3.7).
        body_hash = base64.b64encode(hashlib.sha256(canonical_body(body)).digest())
        timestamp = int(time.time()) if now is None else now
        signatures = [signer.sign_with(key, include_headers, body_hash, timestamp) for key in keys]
        return b"".join(signatures) + message
