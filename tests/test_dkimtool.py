"""`dkim keygen`, `dkim dns`, `domain verify` (against DnsServer) and the SPF evaluator."""
from __future__ import annotations

import argparse
import asyncio
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from test_signing import ed_key, pem, rsa_key, verify_all, write_config, zone_for  # noqa: F401 (fixtures)

from gateway import dkimtool, spf
from gateway.config import load
from gateway.signing import Signer, load_keys, public_key_value
from gateway.testing.dns import DnsServer


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ses-gateway")
    dkimtool.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


# -------------------------------------------------------------------------------------- keygen


def test_keygen_writes_key_and_edits_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    before = config.read_text()
    assert run(["dkim", "keygen", "example.com", "--selector", "s1", "-c", str(config),
                "--key-dir", str(tmp_path / "keys")]) == 0
    key_path = tmp_path / "keys" / "example.com.s1.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    after = config.read_text()
    assert after.startswith(before.rstrip("\n"))        # comments and layout kept
    assert "# test configuration" in after
    loaded = load(str(config))
    assert [(k.selector, k.key_file) for k in loaded.dkim["example.com"]] == [("s1", str(key_path))]
    signer = load_keys(loaded)
    out = capsys.readouterr().out
    record = next(line for line in out.splitlines() if "IN TXT" in line)
    name, strings = record.split(" IN TXT ")
    assert name == "s1._domainkey.example.com"
    parts = re.findall(r'"([^"]*)"', strings)
    assert len(parts) > 1 and all(len(p) <= 255 for p in parts)
    assert "".join(parts) == signer.public_key_record("example.com")[0][1]
    assert "".join(parts).startswith("v=DKIM1; k=rsa; p=")
    private_key = signer.keys("example.com")[0].private_key
    assert isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size == 2048


async def test_keygen_second_key_is_dual_signing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    base = ["-c", str(config), "--key-dir", str(tmp_path)]
    assert run(["dkim", "keygen", "example.com", "--selector", "s1"] + base) == 0
    assert run(["dkim", "keygen", "example.com", "--type", "ed25519"] + base) == 0
    out = capsys.readouterr().out
    assert 'dkim."example.com".selector2 = "ed' in out and "k=ed25519" in out
    signer = load_keys(load(str(config)))
    assert isinstance(signer.keys("example.com")[1].private_key, ed25519.Ed25519PrivateKey)
    signed = signer.sign(b"From: a@example.com\nSubject: x\n\nhi\n", "example.com")
    assert await verify_all(signed, zone_for(signer)) == [True, True]
    # A third key has no place; the config is left as it was.
    text = config.read_text()
    assert run(["dkim", "keygen", "example.com", "--selector", "s3"] + base) == 1
    assert "already has two keys" in capsys.readouterr().err
    assert config.read_text() == text and not (tmp_path / "example.com.s3.pem").exists()


def test_keygen_refuses_to_overwrite_or_reuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    (tmp_path / "example.com.s9.pem").write_text("in use")
    assert run(["dkim", "keygen", "example.com", "--selector", "s9", "-c", str(config), "--key-dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "example.com.s9.pem").read_text() == "in use"
    assert "[dkim" not in config.read_text()


def test_config_errors_exit_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server]\nhostname = 1\n")
    for argv in (["dkim", "keygen", "example.com"], ["dkim", "dns", "example.com"], ["domain", "verify", "example.com"]):
        assert run(argv + ["-c", str(broken)]) == 78
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(broken) in err
    # A bad key is a configuration error too.
    bad_key = write_config(tmp_path, ("s1", b"junk"))
    assert run(["dkim", "dns", "example.com", "-c", str(bad_key)]) == 78
    assert 'dkim."example.com".key_file' in capsys.readouterr().err


# -------------------------------------------------------------------------------------- dns


def test_dns_prints_every_record(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, ("s1", pem(rsa_key)))
    assert run(["dkim", "dns", "example.com", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert re.search(r'^s1\._domainkey\.example\.com IN TXT "v=DKIM1; k=rsa; p=', out, re.M)
    assert 'example.com IN TXT "v=spf1 ip4:192.0.2.10 -all"' in out
    assert '_dmarc.example.com IN TXT "v=DMARC1; p=none"' in out
    assert "MX" in out and "subdomain" in out and "10 minutes" in out
    assert run(["dkim", "dns", "example.org", "-c", str(config)]) == 1
    assert "dkim keygen example.org" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- verify


def good_zone(signer: Signer) -> dict[str, dict[str, Any]]:
    """Records that pass; SPF reaches the egress IP through mx, include, a and redirect=."""
    zone: dict[str, dict[str, Any]] = {
        "example.com": {"TXT": ["v=spf1 mx include:_spf.example.com -all", "google-site-verification=x"],
                        "MX": ["10 mx.example.com."]},
        "mx.example.com": {"A": ["203.0.113.5"]},
        "_spf.example.com": {"TXT": ["v=spf1 a:out.example.com redirect=_spf2.example.com"]},
        "out.example.com": {"A": ["198.51.100.1"]},
        "_spf2.example.com": {"TXT": ["v=spf1 ip6:2001:db8::/32 ip4:192.0.2.0/24 -all"]},
        "_dmarc.example.com": {"TXT": ["v=DMARC1; p=none; rua=mailto:d@example.com"]},
    }
    zone.update(zone_for(signer))
    return zone


async def verify(config: Path, zone: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    async with DnsServer(zone) as server:
        argv = ["domain", "verify", "example.com", "-c", str(config), "--nameserver", f"127.0.0.1:{server.port}"]
        code = await asyncio.to_thread(run, argv)
    return code, capsys.readouterr().out


def row(out: str, check: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(check + " "))


@pytest.fixture
def dual(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> tuple[Path, Signer]:
    config = write_config(tmp_path, ("s1", pem(rsa_key)), ("ed1", pem(ed_key)))
    return config, load_keys(load(str(config)))


async def test_verify_good_records(dual: tuple[Path, Signer], capsys: pytest.CaptureFixture[str]) -> None:
    config, signer = dual
    code, out = await verify(config, good_zone(signer), capsys)
    assert code == 0, out
    for check in ("DKIM s1", "DKIM ed1", "SPF", "DMARC", "MX"):
        assert row(out, check).split()[len(check.split())] == "pass", out
    assert "aligned" in row(out, "DMARC")
    assert "subdomain" in row(out, "MX")      # SPF include: other mail systems use this domain
    assert "10 minutes" in out


def wrong_keys(zone: dict[str, dict[str, Any]]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    zone["s1._domainkey.example.com"] = {"TXT": [public_key_value(other)]}
    zone["ed1._domainkey.example.com"] = {"TXT": ["v=DKIM1; k=ed25519; p="]}


def spf_without_egress_ip(zone: dict[str, dict[str, Any]]) -> None:
    zone["_spf2.example.com"] = {"TXT": ["v=spf1 ip4:198.51.100.0/24 ~all"]}


def spf_over_ten_lookups(zone: dict[str, dict[str, Any]]) -> None:
    zone["example.com"]["TXT"] = ["v=spf1 include:l1.example.com -all"]
    for i in range(1, 12):
        zone[f"l{i}.example.com"] = {"TXT": [f"v=spf1 include:l{i + 1}.example.com"]}
    zone["l12.example.com"] = {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]}


def no_dmarc(zone: dict[str, dict[str, Any]]) -> None:
    del zone["_dmarc.example.com"]


def dns_failures(zone: dict[str, dict[str, Any]]) -> None:
    zone["s1._domainkey.example.com"] = {"SERVFAIL": True}
    zone["_dmarc.example.com"] = {"TIMEOUT": True}


@pytest.mark.parametrize("breakage, expected", [
    (wrong_keys, {"DKIM s1": r"\bFAIL\b.*does not match", "DKIM ed1": r"\bFAIL\b.*revoked", "SPF": "pass"}),
    # The include no longer matches, so the top-level -all decides.
    (spf_without_egress_ip, {"SPF": r"\bFAIL\b.*192\.0\.2\.10: fail", "DMARC": "pass"}),
    (spf_over_ten_lookups, {"SPF": r"\bFAIL\b.*permerror.*more than 10 DNS lookups"}),
    (no_dmarc, {"DMARC": r"\bFAIL\b.*no DMARC record", "SPF": "pass"}),
    # Not a failure of the record: reported as what it is.
    (dns_failures, {"DKIM s1": r"^DKIM s1 +DNS error: SERVFAIL +s1\._domainkey", "DMARC": "DNS error: timeout",
                    "DKIM ed1": "pass"}),
], ids=["wrong-dkim-key", "spf-missing-egress-ip", "spf-over-10-lookups", "no-dmarc", "servfail-timeout"])
async def test_verify_broken_records(breakage: Any, expected: dict[str, str], dual: tuple[Path, Signer],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config, signer = dual
    zone = good_zone(signer)
    breakage(zone)
    code, out = await verify(config, zone, capsys)
    assert code == 1
    for check, pattern in expected.items():
        assert re.search(pattern, row(out, check)), row(out, check)


async def test_verify_missing_mx_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out = await verify(config, {"example.com": {"TXT": ["v=spf1 ip4:192.0.2.10 -all"]},
                                      "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]}}, capsys)
    assert code == 1
    assert "FAIL" in row(out, "DKIM") and "pass" in row(out, "SPF") and "pass" in row(out, "DMARC")
    assert "no MX record" in row(out, "MX")


# -------------------------------------------------------------------------------------- SPF evaluator


def fake_dns(zone: dict[str, dict[str, list[str]]]) -> spf.Lookup:
    def lookup(name: str, rtype: str) -> list[str]:
        entry = zone.get(name, {})
        if entry.get("SERVFAIL"):
            raise spf.DnsError("SERVFAIL")
        return list(entry.get(rtype, []))
    return lookup


@pytest.mark.parametrize("record, ip, expected", [
    ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.2.10", "pass"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "192.0.3.1", "fail"),
    ("v=spf1 ip6:2001:db8::/32 ~all", "2001:db8::1", "pass"),
    ("v=spf1 ip6:2001:db8::/32 ~all", "2001:db9::1", "softfail"),
    ("v=spf1 a/24 -all", "192.0.2.77", "pass"),
    ("v=spf1 a:host.test -all", "192.0.2.77", "fail"),
    ("v=spf1 mx ?all", "203.0.113.5", "pass"),
    ("v=spf1 -mx +all", "203.0.113.5", "fail"),
    ("v=spf1 exists:%{i}.allow.test -all", "192.0.2.10", "pass"),
    ("v=spf1 redirect=other.test", "198.51.100.9", "pass"),
    ("v=spf1 redirect=nothing.test", "198.51.100.9", "permerror"),
    ("v=spf1 include:nothing.test -all", "192.0.2.10", "permerror"),
    ("v=spf1 bogus:x -all", "192.0.2.10", "permerror"),
    ("v=spf1 a:v1.test a:v2.test a:v3.test -all", "192.0.2.10", "permerror"),   # 3 void lookups
    ("v=spf1 include:broken.test -all", "192.0.2.10", "temperror"),
    ("v=spf1", "192.0.2.10", "neutral"),
    ("v=spf1 a/33 -all", "192.0.2.10", "permerror"),
])
def test_check_host(record: str, ip: str, expected: str) -> None:
    zone = {
        "example.test": {"TXT": [record], "A": ["192.0.2.1"], "MX": ["10 mx.example.test."]},
        "mx.example.test": {"A": ["203.0.113.5"]},
        "host.test": {"A": ["192.0.2.78"]},
        "192.0.2.10.allow.test": {"A": ["127.0.0.2"]},
        "other.test": {"TXT": ["v=spf1 ip4:198.51.100.9 -all"]},
        "broken.test": {"SERVFAIL": ["yes"]},
    }
    assert spf.check_host(fake_dns(zone), ip, "example.test").result == expected


def test_two_spf_records_are_a_permerror() -> None:
    lookup = fake_dns({"example.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]}})
    assert spf.check_host(lookup, "192.0.2.1", "example.test").result == "permerror"
    assert spf.check_host(fake_dns({}), "192.0.2.1", "example.test").result == "none"
