"""MX resolution for direct delivery: which hosts, in which order, at which addresses.

RFC 5321 §5.1: MX records sorted by preference, equal preferences in random order; no MX
record means the domain itself is the (implicit) MX. RFC 7505: a single ``MX 0 .`` says the
domain accepts no mail. Answers are cached for their TTL so that a busy destination does not
cost one DNS round trip per message, and concurrent lookups of one domain share one query.
"""
from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import structlog

from gateway.transports.base import AttemptResult

log = structlog.get_logger("gateway.transports")

CACHE_SIZE = 4096           # domains; the oldest entry goes first when full
MAX_TTL = 3600.0            # re-check at least hourly whatever the zone says
NEGATIVE_TTL = 60.0         # NXDOMAIN / no-records answers (no SOA minimum is at hand)
MAX_ADDRESSES = 8           # per MX host (Postfix smtp_mx_address_limit is in this range)

# An MX host and its addresses, A records before AAAA.
Host = tuple[str, list[str]]
# Hosts grouped by preference, most preferred group first (shuffled per lookup).
_Groups = tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]


class MxError(Exception):
    """Resolution ended in an outcome (deferred or bounced) instead of a list of hosts."""

    def __init__(self, result: AttemptResult) -> None:
        super().__init__(result.describe())
        self.result = result


@dataclass(frozen=True)
class _Entry:
    expires: float
    groups: _Groups
    error: AttemptResult | None = None


def is_local_address(address: str) -> bool:
    """Loopback, private, link-local and the like: never a legitimate public MX."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def _temporary(domain: str, why: str) -> MxError:
    # RFC 3463 4.4.3: directory server failure; the scheduler retries later.
    return MxError(AttemptResult.deferred("4.4.3", f"DNS lookup for {domain} failed: {why}"))


def _address_literal(domain: str) -> str | None:
    """``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3) → the address, else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


class MxResolver:
    def __init__(self, nameservers: tuple[tuple[str, int], ...], timeout: float, allow_local: bool) -> None:
        self.nameservers = nameservers
        self.timeout = timeout
        self.allow_local = allow_local
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            # Empty nameservers → /etc/resolv.conf (raises NoResolverConfiguration if unusable).
            resolver = dns.asyncresolver.Resolver(configure=not self.nameservers)
            if self.nameservers:
                resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers]
            resolver.timeout = self.timeout
            resolver.lifetime = self.timeout
            self._resolver = resolver
        return self._resolver

    async def resolve(self, domain: str) -> list[Host]:
        """MX hosts of ``domain`` in the order to try them, each with its addresses.

        Raises :class:`MxError` carrying a deferred or bounced :class:`AttemptResult`.
        """
        domain = domain.strip().lower().rstrip(".")
        literal = _address_literal(domain)
        if literal is not None:
            groups: _Groups = (((literal, (literal,)),),)
        else:
            entry = self._cached(domain)
            if entry is None:
                entry = await self._shared_lookup(domain)
            if entry.error is not None:
                raise MxError(entry.error)
            groups = entry.groups
        return self._order(domain, groups)

    def _order(self, domain: str, groups: _Groups) -> list[Host]:
        hosts: list[Host] = []
        found_any = False
        for group in groups:
            shuffled = list(group)
            random.shuffle(shuffled)   # RFC 5321 §5.1: spread load over equal preferences
            for host, addresses in shuffled:
                found_any = found_any or bool(addresses)
                usable = [a for a in addresses if self.allow_local or not is_local_address(a)]
                if usable:
                    hosts.append((host, usable))
        if hosts:
            return hosts
        if found_any:
            # Local addresses mean a misconfigured zone or a routing loop; a zone fix is
            # likely, so defer rather than bounce (the lifetime limit bounces eventually).
            raise MxError(AttemptResult.deferred("4.4.4", f"MX hosts of {domain} resolve only to local addresses"))
        raise MxError(AttemptResult.deferred("4.4.4", f"no address for any MX host of {domain}"))

    def _cached(self, domain: str) -> _Entry | None:
        entry = self._cache.get(domain)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return entry

    def _store(self, domain: str, entry: _Entry) -> None:
        if entry.expires <= time.monotonic():
            return
        self._cache[domain] = entry
        self._cache.move_to_end(domain)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def _shared_lookup(self, domain: str) -> _Entry:
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.create_task(self._lookup(domain))
            self._inflight[domain] = task

            def done(finished: asyncio.Task[_Entry]) -> None:
                self._inflight.pop(domain, None)
                if not finished.cancelled():
                    finished.exception()   # retrieved here: every waiter may have gone

            task.add_done_callback(done)
        # shield: one cancelled delivery must not cancel the lookup others wait for.
        return await asyncio.shield(task)

    async def _lookup(self, domain: str) -> _Entry:
        try:
            resolver = self._get_resolver()
            name = dns.name.from_text(domain)
        except dns.resolver.NoResolverConfiguration as exc:
            raise _temporary(domain, f"no resolver configuration ({exc})") from None
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel, dns.name.IDNAException, ValueError):
            entry = _Entry(time.monotonic() + NEGATIVE_TTL, (),
                           AttemptResult.bounced("5.1.2", f"{domain} is not a valid domain name", code=550))
            self._store(domain, entry)
            return entry
        now = time.monotonic()
        try:
            answer = await resolver.resolve(name, dns.rdatatype.MX, search=False)
        except dns.resolver.NXDOMAIN:
            # RFC 3463 5.1.2: bad destination system address.
            entry = _Entry(now + NEGATIVE_TTL, (), AttemptResult.bounced("5.1.2", f"domain {domain} does not exist", code=550))
            self._store(domain, entry)
            log.info("mx lookup", domain=domain, result="nxdomain")
            return entry
        except dns.resolver.NoAnswer:
            return await self._implicit_mx(domain, name, now)
        except dns.exception.DNSException as exc:
            # SERVFAIL (NoNameservers), timeouts and the like: temporary (reliability.md §1.9).
            log.info("mx lookup", domain=domain, result="temporary", error=type(exc).__name__)
            raise _temporary(domain, type(exc).__name__) from None

        assert answer.rrset is not None
        ttl = float(answer.rrset.ttl)
        records = sorted((int(r.preference), r.exchange) for r in answer.rrset)
        real = [(pref, exchange) for pref, exchange in records if exchange != dns.name.root]
        if not real:
            # RFC 7505 §3/§4.1: a null MX; the 556 5.1.10 a receiver would give.
            entry = _Entry(now + min(ttl, MAX_TTL), (),
                           AttemptResult.bounced("5.1.10", f"domain {domain} accepts no mail (null MX)", code=556))
            self._store(domain, entry)
            log.info("mx lookup", domain=domain, result="null mx")
            return entry

        lookups = await asyncio.gather(*(self._addresses(exchange) for _, exchange in real))
        groups: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
        temporary = False
        for (pref, exchange), (addresses, host_ttl, failed) in zip(real, lookups):
            temporary = temporary or failed
            ttl = min(ttl, host_ttl)
            groups.setdefault(pref, []).append((exchange.to_text(omit_final_dot=True).lower(), addresses))
        if temporary and not any(addresses for addresses, _, _ in lookups):
            raise _temporary(domain, "MX host addresses unavailable")
        ordered = tuple(tuple(groups[pref]) for pref in sorted(groups))
        entry = _Entry(now + min(ttl, MAX_TTL) if not temporary else now, ordered)
        self._store(domain, entry)
        log.debug("mx lookup", domain=domain, hosts=[h for g in ordered for h, _ in g], ttl=ttl)
        return entry

    async def _implicit_mx(self, domain: str, name: dns.name.Name, now: float) -> _Entry:
        # RFC 5321 §5.1: no MX records → the domain's own address records, preference 0.
        addresses, ttl, failed = await self._addresses(name)
        if not addresses:
            if failed:
                raise _temporary(domain, "address lookup failed")
            entry = _Entry(now + NEGATIVE_TTL, (),
                           AttemptResult.bounced("5.1.2", f"domain {domain} has no MX or address records", code=550))
            self._store(domain, entry)
            return entry
        entry = _Entry(now + min(ttl, MAX_TTL), (((domain, addresses),),))
        self._store(domain, entry)
        log.debug("mx lookup", domain=domain, implicit=True, ttl=ttl)
        return entry

    async def _addresses(self, name: dns.name.Name) -> tuple[tuple[str, ...], float, bool]:
        """A then AAAA records of ``name``: (addresses, smallest TTL, a lookup failed temporarily)."""
        resolver = self._get_resolver()
        results = await asyncio.gather(
            *(resolver.resolve(name, rdtype, search=False) for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)),
            return_exceptions=True)
        addresses: list[str] = []
        ttl = MAX_TTL
        failed = False
        for result in results:
            if isinstance(result, (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)):
                continue
            if isinstance(result, BaseException):
                if not isinstance(result, dns.exception.DNSException):
                    raise result
                failed = True
                continue
            assert result.rrset is not None
            ttl = min(ttl, float(result.rrset.ttl))
            addresses.extend(r.address for r in result.rrset)
        return tuple(addresses[:MAX_ADDRESSES]), ttl, failed
