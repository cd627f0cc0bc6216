"""`ses-gateway dkim keygen|dns` and `ses-gateway domain verify`: sending-domain identity.

keygen makes a key and adds it to the configuration file (tomlkit keeps comments and layout);
dns prints every record a sending domain needs; verify reads them back from the DNS and says
what passes. Each command returns an exit status; configuration errors print one line and
return 78 (EX_CONFIG).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dkim.crypto
import dkim.util
import tomlkit
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway import spf
from gateway.config import EX_CONFIG, Config, ConfigError, load, parse, parse_hostport
from gateway.signing import LoadedKey, Signer, load_keys, new_private_key, public_key_value, write_private_key

DEFAULT_CONFIG = "/etc/ses-gateway/gateway.toml"
PROPAGATION_NOTE = ("Note: DNS changes can take about 10 minutes plus the record's TTL "
                    "(the time resolvers may keep the old answer) to become visible.")


def _error(message: str) -> None:
    print(f"ses-gateway: {message}", file=sys.stderr)


def _load(path: str) -> tuple[Config, Signer]:
    config = load(path)
    return config, load_keys(config)


def txt_strings(value: str) -> str:
    """A TXT value as quoted strings of at most 255 characters (RFC 1035 §3.3.14)."""
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


def record_line(name: str, rtype: str, value: str) -> str:
    return f"{name} IN {rtype} {txt_strings(value) if rtype == 'TXT' else value}"


# --------------------------------------------------------------------------------------
# dkim keygen


def _default_selector(key_type: str) -> str:
    # A dated selector lets the next key be published beside this one during rotation.
    return ("ed" if key_type == "ed25519" else "s") + time.strftime("%Y%m")


def _add_to_config(text: str, domain: str, selector: str, key_file: str) -> str:
    """The configuration text with the key added as [dkim."domain"] (or its second key)."""
    document = tomlkit.parse(text)
    if "dkim" not in document:
        if not text.endswith("\n\n"):
            document.add(tomlkit.nl())
        document.add("dkim", tomlkit.table(is_super_table=True))
    dkim_table = document["dkim"]
    assert isinstance(dkim_table, dict)
    existing = next((name for name in dkim_table if name.lower() == domain), None)
    if existing is None:
        table = tomlkit.table()
        table.add("selector", selector)
        table.add("key_file", key_file)
        table.add(tomlkit.nl())
        dkim_table[domain] = table
    else:
        table = dkim_table[existing]
        table["selector2"] = selector
        table["key_file2"] = key_file
    return tomlkit.dumps(document).rstrip("\n") + "\n"


def _replace_file(path: Path, text: str) -> None:
    """Write ``path`` atomically, keeping its mode (it may hold secrets)."""
    mode = path.stat().st_mode & 0o7777
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def cmd_keygen(args: argparse.Namespace) -> int:
    domain = args.domain.lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", domain):
        _error(f"{args.domain!r} is not a domain name")
        return 2
    try:
        config = load(args.config)
    except ConfigError as exc:
        _error(str(exc))
        return EX_CONFIG
    selector = args.selector or _default_selector(args.type)
    existing = config.dkim.get(domain, ())
    if len(existing) >= 2:
        _error(f'dkim."{domain}" already has two keys; remove one (selector2/key_file2) first')
        return 1
    if any(key.selector == selector for key in existing):
        _error(f'dkim."{domain}" already uses selector {selector!r}; choose another with --selector')
        return 1
    if config.account_for_domain(domain) is None:
        print(f"warning: no [accounts] entry owns {domain}; mail from it is refused until one does",
              file=sys.stderr)
    config_path = Path(args.config)
    key_dir = Path(args.key_dir) if args.key_dir else config_path.resolve().parent / "dkim"
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = (key_dir / f"{domain}.{selector}.pem").resolve()
    key = new_private_key(args.type)
    try:
        write_private_key(key_path, key)
    except FileExistsError:
        _error(f"{key_path} already exists; not overwriting a key that may be in use")
        return 1
    except OSError as exc:
        _error(f"cannot write {key_path}: {exc.strerror}")
        return 1
    try:
        new_text = _add_to_config(config_path.read_text(encoding="utf-8"), domain, selector, str(key_path))
        # Check the result as `run` would before replacing the file the gateway reads.
        load_keys(parse(new_text, path=args.config))
        _replace_file(config_path, new_text)
    except (ConfigError, OSError) as exc:
        key_path.unlink()
        _error(str(exc))
        return EX_CONFIG
    print(f"wrote {key_path} (mode 0600) and added it to {args.config} as "
          f'dkim."{domain}".{"selector2" if existing else "selector"} = "{selector}"')
    print("Publish this DNS record, then run `ses-gateway domain verify`:")
    print(record_line(f"{selector}._domainkey.{domain}", "TXT", public_key_value(key)))
    return 0


# --------------------------------------------------------------------------------------
# dkim dns


def spf_value(config: Config) -> str:
    mechanisms = [f"ip{6 if ':' in ip else 4}:{ip}" for ip in config.delivery.egress_ips]
    if not mechanisms:
        mechanisms = [f"a:{config.hostname}"]
    return "v=spf1 " + " ".join(mechanisms) + " -all"


def cmd_dns(args: argparse.Namespace) -> int:
    domain = args.domain.lower().rstrip(".")
    try:
        config, signer = _load(args.config)
    except ConfigError as exc:
        _error(str(exc))
        return EX_CONFIG
    if not signer.can_sign(domain):
        _error(f'no [dkim."{domain}"] key in {args.config}; run `ses-gateway dkim keygen {domain}` first')
        return 1
    print(f"; DNS records for {domain}: publish these at the domain's DNS provider.")
    for key in signer.keys(domain):
        print(f"; DKIM public key, selector {key.config.selector}, {key.config.algorithm} (RFC 6376 §3.6.2)")
        print(record_line(key.dns_name(), "TXT", key.dns_value()))
    print("; SPF: the addresses this gateway sends from (RFC 7208). A domain has exactly one SPF record")
    print(";   (§4.5): merge these mechanisms into an existing one instead of adding a second.")
    if not config.delivery.egress_ips:
        print(f";   delivery.egress_ips is not set: a:{config.hostname} is a guess; set the real addresses.")
    if config.delivery.transport != "mx":
        print(f";   transport = {config.delivery.transport}: also include the relay provider's SPF record.")
    print(record_line(domain, "TXT", spf_value(config)))
    print("; DMARC (RFC 7489 §6.3): start with p=none and watch the reports (add rua=mailto:ADDRESS),")
    print(";   then move to p=quarantine or p=reject once all mail passes.")
    print(record_line(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=none"))
    print("; MX: bounces and replies to this domain need an MX record (receivers may refuse a sender")
    print(f";   domain that cannot receive mail). If {domain} is already a corporate mail domain with its own")
    print(";   MX and SPF, send from a dedicated subdomain instead (e.g. mail." + domain + "), so the")
    print(";   gateway's SPF and DMARC settings cannot conflict with the existing mail system.")
    print(f";   {domain} IN MX 10 <your inbound mail host>.")
    print(PROPAGATION_NOTE)
    return 0


# --------------------------------------------------------------------------------------
# domain verify


@dataclass(frozen=True)
class Check:
    name: str
    status: str         # "pass", "FAIL" or "DNS error: …"
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "pass"


def _dns_error(name: str, exc: spf.DnsError, where: str) -> Check:
    return Check(name, f"DNS error: {exc}", f"{where}: the record itself was not checked")


def _published_key_matches(key: LoadedKey, tags: dict[bytes, bytes]) -> str | None:
    """None when the published p= is ``key``'s public key, else why not."""
    expected = b"ed25519" if key.config.algorithm == "ed25519-sha256" else b"rsa"
    if tags.get(b"k", b"rsa") != expected:
        return f"k={tags.get(b'k', b'rsa').decode()} but the key file is {expected.decode()}"
    published = re.sub(rb"\s+", b"", tags.get(b"p", b""))
    if not published:
        return "p= is empty: the key is revoked (RFC 6376 §3.6.1)"
    try:
        data = base64.b64decode(published, validate=True)
    except (binascii.Error, ValueError):
        return "p= is not valid base64"
    public = key.private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        ok = data == public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        try:
            # dkimpy's parser takes SubjectPublicKeyInfo or a bare RSAPublicKey, as verifiers do.
            parsed = dkim.crypto.parse_public_key(data)
        except dkim.crypto.UnparsableKeyError:
            return "p= is not an RSA public key"
        numbers = public.public_numbers()
        ok = (parsed["modulus"], parsed["publicExponent"]) == (numbers.n, numbers.e)
    return None if ok else "the published key does not match the private key file"


def check_dkim(lookup: spf.Lookup, key: LoadedKey) -> Check:
    name, label = key.dns_name(), f"DKIM {key.config.selector}"
    try:
        texts = lookup(name, "TXT")
    except spf.DnsError as exc:
        return _dns_error(label, exc, name)
    if not texts:
        return Check(label, "FAIL", f"no TXT record at {name}")
    if len(texts) > 1:
        return Check(label, "FAIL", f"{len(texts)} TXT records at {name}; publish exactly one")
    try:
        tags = dkim.util.parse_tag_value(texts[0].encode("utf-8"))
    except dkim.util.InvalidTagValueList:
        return Check(label, "FAIL", f"{name}: not a tag=value list (RFC 6376 §3.2)")
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        return Check(label, "FAIL", f"{name}: v= must be DKIM1")
    problem = _published_key_matches(key, tags)
    if problem:
        return Check(label, "FAIL", f"{name}: {problem}")
    return Check(label, "pass", f"{name} matches {key.config.key_file} ({key.config.algorithm})")


def check_spf(lookup: spf.Lookup, domain: str, egress_ips: tuple[str, ...]) -> Check:
    try:
        records = spf.spf_records(lookup(domain, "TXT"))
    except spf.DnsError as exc:
        return _dns_error("SPF", exc, domain)
    if not records:
        return Check("SPF", "FAIL", f"no SPF record at {domain}")
    if not egress_ips:
        return Check("SPF", "FAIL", "delivery.egress_ips is not set: cannot tell which addresses must pass")
    problems, dns_errors = [], []
    for ip in egress_ips:
        result = spf.check_host(lookup, ip, domain)
        if result.result == "temperror":
            dns_errors.append(f"{ip}: {result.detail}")
        elif result.result != "pass":
            problems.append(f"{ip}: {result.result} ({result.detail})")
    if problems:
        return Check("SPF", "FAIL", "; ".join(problems))
    if dns_errors:
        return Check("SPF", dns_errors[0].split(": ", 1)[1], "; ".join(dns_errors))
    return Check("SPF", "pass", f"{', '.join(egress_ips)} authorised by {records[0]!r}")


def _organizational_domain(domain: str) -> str:
    # RFC 7489 §3.2 uses the Public Suffix List; the last two labels are an approximation
    # that is right for the usual example.com / mail.example.com cases.
    return ".".join(domain.split(".")[-2:])


def check_dmarc(lookup: spf.Lookup, domain: str) -> Check:
    candidates = [domain]
    if _organizational_domain(domain) != domain:
        candidates.append(_organizational_domain(domain))     # RFC 7489 §6.6.3 step 3
    for policy_domain in candidates:
        name = f"_dmarc.{policy_domain}"
        try:
            records = [t for t in lookup(name, "TXT") if re.match(r"^v\s*=\s*DMARC1\s*(;|$)", t)]
        except spf.DnsError as exc:
            return _dns_error("DMARC", exc, name)
        if not records:
            continue
        if len(records) > 1:
            return Check("DMARC", "FAIL", f"{len(records)} DMARC records at {name} (RFC 7489 §6.6.3)")
        tags = dict(
            (part.split("=", 1)[0].strip().lower(), part.split("=", 1)[1].strip())
            for part in records[0].split(";") if "=" in part)
        policy = tags.get("sp" if policy_domain != domain and "sp" in tags else "p", "")
        if policy not in ("none", "quarantine", "reject"):
            return Check("DMARC", "FAIL", f"{name}: p= must be none, quarantine or reject")
        # Our signatures use d=<the From domain> itself, so DKIM is aligned in both the
        # relaxed and the strict mode (RFC 7489 §3.1.1).
        mode = "strict" if tags.get("adkim", "r") == "s" else "relaxed"
        return Check("DMARC", "pass", f"{name}: p={policy}; DKIM d={domain} aligned ({mode})")
    return Check("DMARC", "FAIL", f"no DMARC record at _dmarc.{domain}")


def check_mx(lookup: spf.Lookup, domain: str) -> Check:
    try:
        answers = lookup(domain, "MX")
        spf_texts = spf.spf_records(lookup(domain, "TXT"))
    except spf.DnsError as exc:
        return _dns_error("MX", exc, domain)
    hosts = sorted((int(r.split()[0]), r.split()[1].rstrip(".")) for r in answers)
    if not hosts:
        return Check("MX", "FAIL", f"no MX record at {domain}: replies and bounces cannot reach it")
    if hosts[0][1] == "":
        return Check("MX", "FAIL", f"{domain} has a null MX (RFC 7505): it accepts no mail, so no bounces")
    detail = "MX " + ", ".join(f"{p} {h}" for p, h in hosts)
    others = [t for t in (spf_texts[0].split()[1:] if spf_texts else []) if "include:" in t or "redirect=" in t]
    if others:
        # The SES guidance: a domain that other mail systems use is better left to them.
        detail += (f"; also used by other mail systems ({' '.join(others)}): consider sending from "
                   f"a subdomain such as mail.{domain} to avoid SPF/MX conflicts")
    return Check("MX", "pass", detail)


def verify_domain(lookup: spf.Lookup, config: Config, signer: Signer, domain: str) -> list[Check]:
    checks: list[Check] = []
    if not signer.can_sign(domain):
        checks.append(Check("DKIM", "FAIL", f'no [dkim."{domain}"] key in the configuration'))
    checks.extend(check_dkim(lookup, key) for key in signer.keys(domain))
    checks.append(check_spf(lookup, domain, config.delivery.egress_ips))
    checks.append(check_dmarc(lookup, domain))
    checks.append(check_mx(lookup, domain))
    return checks


def _nameservers(args: argparse.Namespace, config: Config) -> tuple[tuple[str, int], ...]:
    if args.nameserver:
        return tuple(parse_hostport(item, default_port=53) for item in args.nameserver)
    return config.delivery.dns_nameservers


def cmd_verify(args: argparse.Namespace) -> int:
    domain = args.domain.lower().rstrip(".")
    try:
        config, signer = _load(args.config)
        nameservers = _nameservers(args, config)
    except ConfigError as exc:
        _error(str(exc))
        return EX_CONFIG
    except ValueError as exc:
        _error(f"--nameserver: {exc}")
        return 2
    try:
        resolver = spf.Dns(nameservers, config.delivery.dns_timeout)
    except Exception as exc:  # dnspython: no /etc/resolv.conf and no nameserver configured
        _error(f"no DNS resolver: {exc}; use --nameserver HOST:PORT")
        return 1
    checks = verify_domain(resolver.query, config, signer, domain)
    width = max(len(c.name) for c in checks)
    status_width = max(len(c.status) for c in checks)
    print(f"{'CHECK':<{width}}  {'RESULT':<{status_width}}  DETAIL")
    for check in checks:
        print(f"{check.name:<{width}}  {check.status:<{status_width}}  {check.detail}")
    passed = all(check.ok for check in checks)
    print(f"{domain}: {'all checks pass' if passed else 'some checks did not pass'}")
    print(PROPAGATION_NOTE)
    return 0 if passed else 1


# --------------------------------------------------------------------------------------


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `dkim` and `domain` command groups to the ses-gateway parser."""
    dkim_parser = subparsers.add_parser("dkim", help="DKIM keys and DNS records")
    dkim_sub = dkim_parser.add_subparsers(dest="dkim_command", required=True)
    keygen = dkim_sub.add_parser("keygen", help="make a key, add it to the configuration, print its DNS record")
    keygen.add_argument("domain")
    keygen.add_argument("--selector", help="DKIM selector (default s<YYYYMM>, ed<YYYYMM> for Ed25519)")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="key type (default rsa, 2048 bits)")
    keygen.add_argument("--key-dir", help="where to write the key (default: dkim/ beside the configuration file)")
    _config_arg(keygen)
    keygen.set_defaults(func=cmd_keygen)
    dns_parser = dkim_sub.add_parser("dns", help="print the DKIM, SPF, DMARC and MX records a domain needs")
    dns_parser.add_argument("domain")
    _config_arg(dns_parser)
    dns_parser.set_defaults(func=cmd_dns)

    domain_parser = subparsers.add_parser("domain", help="sending-domain checks")
    domain_sub = domain_parser.add_subparsers(dest="domain_command", required=True)
    verify = domain_sub.add_parser("verify", help="check the domain's DKIM, SPF, DMARC and MX records in DNS")
    verify.add_argument("domain")
    verify.add_argument("--nameserver", action="append", metavar="HOST:PORT",
                        help="ask this DNS server (default: delivery.dns_nameservers, else the system's)")
    _config_arg(verify)
    verify.set_defaults(func=cmd_verify)
