"""SPF evaluation (RFC 7208) for `domain verify`: does the domain authorise our egress IPs?

A checker, not a receiver-side filter: ``check_host`` answers for one IP, counting DNS lookups
against the 10-lookup limit and void lookups against the limit of 2 (§4.6.4), so a record that
real receivers would reject with permerror fails here too.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable

import dns.exception
import dns.nameserver
import dns.resolver

MAX_LOOKUPS = 10        # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2    # RFC 7208 §4.6.4
MAX_MX_NAMES = 10       # RFC 7208 §4.6.4


class DnsError(Exception):
    """The DNS could not answer (SERVFAIL, timeout): says nothing about the record itself."""


class Dns:
    """A small synchronous resolver: lists of strings; [] for NXDOMAIN or no answer."""

    def __init__(self, nameservers: tuple[tuple[str, int], ...] = (), timeout: float = 5.0) -> None:
        self.resolver = dns.resolver.Resolver(configure=not nameservers)
        if nameservers:
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
        self.resolver.lifetime = timeout
        self.resolver.timeout = timeout

    def query(self, name: str, rtype: str) -> list[str]:
        try:
            answer = self.resolver.resolve(name, rtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.NoNameservers as exc:
            raise DnsError(_rcode(exc)) from None
        except dns.exception.Timeout:
            raise DnsError("timeout") from None
        except dns.exception.DNSException as exc:     # e.g. a malformed name in a record
            raise DnsError(type(exc).__name__) from None
        if rtype == "TXT":
            # A TXT record's strings are one value (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
            return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return [r.to_text() for r in answer]


def _rcode(exc: dns.resolver.NoNameservers) -> str:
    text = str(exc)
    for code in ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR"):
        if code in text:
            return code
    return "no nameserver answered"


Lookup = Callable[[str, str], list[str]]


@dataclass(frozen=True)
class SpfResult:
    result: str         # pass | fail | softfail | neutral | none | permerror | temperror (§2.6)
    detail: str


class _PermError(Exception):
    pass


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_CIDR = re.compile(r"^(?P<domain>[^/]*)(?:/(?P<v4>\d+))?(?://(?P<v6>\d+))?$")


def spf_records(texts: list[str]) -> list[str]:
    """The SPF records among TXT values (RFC 7208 §4.5: "v=spf1" then a space or the end)."""
    return [t for t in texts if re.match(r"(?i)^v=spf1(\s|$)", t)]


class _Evaluation:
    def __init__(self, lookup: Lookup, ip: str, sender_domain: str) -> None:
        self.lookup = lookup
        self.ip = ipaddress.ip_address(ip)
        self.sender_domain = sender_domain
        self.lookups = 0
        self.voids = 0

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(f"more than {MAX_LOOKUPS} DNS lookups (RFC 7208 §4.6.4)")

    def query(self, name: str, rtype: str) -> list[str]:
        answer = self.lookup(name, rtype)
        if not answer:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups (RFC 7208 §4.6.4)")
        return answer

    def check_host(self, domain: str) -> SpfResult:
        records = spf_records(self.lookup(domain, "TXT"))
        if not records:
            return SpfResult("none", f"no SPF record at {domain}")
        if len(records) > 1:
            raise _PermError(f"{len(records)} SPF records at {domain} (RFC 7208 §4.5)")
        terms = records[0].split()[1:]
        redirect = None
        for term in terms:
            name, sep, value = term.partition("=")
            if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
                if name.lower() == "redirect":
                    redirect = value
                continue    # exp= and unknown modifiers do not change the result (§6)
            qualifier = "+"
            if term[0] in _QUALIFIERS:
                qualifier, term = term[0], term[1:]
            if self.matches(term, domain):
                return SpfResult(_QUALIFIERS[qualifier], f"{self.ip} matched {term!r} at {domain}")
        if redirect is not None:
            # §6.1: redirect= counts as a lookup; a target without a record is a permerror.
            self.count()
            target = self.expand(redirect, domain)
            result = self.check_host(target)
            if result.result == "none":
                raise _PermError(f"redirect={target} has no SPF record")
            return result
        return SpfResult("neutral", f"{self.ip} matched nothing at {domain}")

    def matches(self, term: str, domain: str) -> bool:
        parsed = re.match(r"([A-Za-z0-9]+)(.*)$", term)
        if parsed is None:
            raise _PermError(f"bad term {term!r} (RFC 7208 §4.6.1)")
        mechanism, rest = parsed.group(1).lower(), parsed.group(2)
        argument = rest[1:] if rest.startswith(":") else rest
        if mechanism == "all" and not rest:
            return True
        if mechanism in ("ip4", "ip6") and rest.startswith(":"):
            try:
                network = ipaddress.ip_network(argument, strict=False)
            except ValueError:
                raise _PermError(f"bad network in {term!r}") from None
            return self.ip.version == network.version and self.ip in network
        if mechanism == "include" and argument:
            self.count()
            result = self.check_host(self.expand(argument, domain))
            if result.result in ("none", "permerror"):
                raise _PermError(f"include:{argument} has no valid SPF record")
            return result.result == "pass"
        if mechanism in ("a", "mx"):
            return self.address_match(mechanism, argument, domain)
        if mechanism == "exists" and argument:
            self.count()
            return bool(self.query(self.expand(argument, domain), "A"))
        if mechanism == "ptr":
            # §5.5: "SHOULD NOT be used"; counted, never matched (we cannot know our PTR here).
            self.count()
            return False
        raise _PermError(f"unknown or malformed mechanism {term!r} (RFC 7208 §5)")

    def address_match(self, mechanism: str, spec: str, domain: str) -> bool:
        match = _CIDR.match(spec)
        if match is None:
            raise _PermError(f"bad {mechanism} mechanism {spec!r}")
        target = self.expand(match.group("domain") or domain, domain)
        v4 = int(match.group("v4") or 32)
        v6 = int(match.group("v6") or 128)
        if v4 > 32 or v6 > 128:
            raise _PermError(f"bad prefix length in {mechanism} mechanism {spec!r}")
        self.count()
        hosts = [target]
        if mechanism == "mx":
            names = [r.split()[-1].rstrip(".") for r in self.query(target, "MX")]
            if len(names) > MAX_MX_NAMES:
                raise _PermError(f"more than {MAX_MX_NAMES} MX names for {target} (RFC 7208 §4.6.4)")
            hosts = [n for n in names if n]
        rtype, prefix = ("A", v4) if self.ip.version == 4 else ("AAAA", v6)
        for host in hosts:
            for address in self.query(host, rtype):
                if self.ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False):
                    return True
        return False

    def expand(self, spec: str, domain: str) -> str:
        """Macro expansion (RFC 7208 §7) for the letters a checker can know."""
        if "%" not in spec:
            return spec.rstrip(".")
        values = {
            "s": f"postmaster@{self.sender_domain}", "l": "postmaster", "o": self.sender_domain,
            "d": domain, "v": "in-addr" if self.ip.version == 4 else "ip6", "h": self.sender_domain,
            "i": str(self.ip) if self.ip.version == 4 else ".".join(self.ip.exploded.replace(":", "")),
        }

        def one(match: re.Match[str]) -> str:
            if match.group(0) in ("%%", "%_", "%-"):
                return {"%%": "%", "%_": " ", "%-": "%20"}[match.group(0)]
            letter, digits, reverse, delimiters = match.group(1, 2, 3, 4)
            if letter.lower() not in values:
                raise _PermError(f"unsupported macro %{{{letter}}}")
            parts = re.split("[" + re.escape(delimiters or ".") + "]", values[letter.lower()])
            if reverse:
                parts.reverse()
            if digits:
                parts = parts[-int(digits):]
            return ".".join(parts)

        try:
            return re.sub(r"%%|%_|%-|%\{([A-Za-z])(\d*)(r?)([.\-+,/_=]*)\}", one, spec).rstrip(".")
        except re.error:
            raise _PermError(f"bad macro in {spec!r}") from None


def check_host(lookup: Lookup, ip: str, domain: str) -> SpfResult:
    """RFC 7208 §4: the SPF result for mail from ``domain`` sent by ``ip``."""
    evaluation = _Evaluation(lookup, ip, domain)
    try:
        return evaluation.check_host(domain)
    except _PermError as exc:
        return SpfResult("permerror", str(exc))
    except DnsError as exc:
        return SpfResult("temperror", f"DNS error: {exc}")
