"""SSRF guard for callback URLs (reliability.md §5 and §8 row 61, OWASP SSRF cheat sheet).

A callback URL is chosen by whoever configures an account, so the gateway must not become a
way to reach its own network. Every attempt resolves the host, refuses the URL when *any*
address is not a public one, and connects to exactly the addresses it checked: the
aiohttp connector asks :class:`GuardedResolver`, which answers with the pinned, checked list
(defeats DNS rebinding between check and connect). IP literals never reach a resolver in
aiohttp, so :func:`check_literal` runs on every attempt too, including the spellings
``inet_aton`` accepts (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``).

Always refused: unspecified, multicast, link-local (169.254/16 with the cloud metadata
address 169.254.169.254, fe80::/10), reserved, and the known metadata addresses
(fd00:ec2::254, 100.100.100.200), also in IPv4-mapped IPv6 form (``::ffff:a.b.c.d``).
Refused unless ``allow_private_callbacks = true``: loopback, RFC 1918, CGNAT 100.64/10,
unique-local fc00::/7 (fd00::/8) and any other non-global address.
"""
from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import re
import socket
from typing import Callable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.0.23")}
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.I)
RESOLVE_TIMEOUT = 5.0


class ForbiddenAddress(OSError):
    """The callback host is, or resolves to, an address callbacks may not reach."""


def why_forbidden(ip: IPAddress, *, allow_private: bool) -> str | None:
    """A short reason when ``ip`` may not be called back, else None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return why_forbidden(ip.ipv4_mapped, allow_private=allow_private)
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_link_local:
        return "link-local"
    if ip.is_global:
        return None
    if allow_private and (ip.is_loopback or ip.is_private or ip in ipaddress.ip_network("100.64.0.0/10")):
        return None
    if ip.is_loopback:
        return "loopback"
    return "private" if ip.is_private else "not a public address"


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, in any spelling a resolver would accept, else None."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.match(text):
        try:      # inet_aton reads decimal (2130706433), octal (0177.0.0.1), hex and short forms
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def check_literal(host: str, *, allow_private: bool) -> None:
    """Raise :class:`ForbiddenAddress` for forbidden IP literals and ``localhost`` names."""
    name = host.strip("[]").rstrip(".").lower()
    if not allow_private and (name == "localhost" or name.endswith(".localhost")):
        raise ForbiddenAddress(f"callback host {host} is loopback")
    address = literal_address(host)
    if address is not None:
        reason = why_forbidden(address, allow_private=allow_private)
        if reason:
            raise ForbiddenAddress(f"callback host {host} is {address} ({reason})")


def check_url(url: str, *, allow_private: bool) -> str | None:
    """Config-load check (no DNS): an error text, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http(s) URL with a host"
    if parts.username or parts.password:
        return "must not contain credentials"
    try:
        check_literal(parts.hostname, allow_private=allow_private)
    except ForbiddenAddress as exc:
        return str(exc)
    return None


async def resolve_checked(host: str, port: int, *, allow_private: bool,
                          family: int = socket.AF_UNSPEC) -> list[ResolveResult]:
    """Resolve ``host`` and refuse it when any address is forbidden; the list to pin."""
    check_literal(host, allow_private=allow_private)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host.strip("[]"), port, family=family, type=socket.SOCK_STREAM)
    except (socket.gaierror, TimeoutError) as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from None
    results: list[ResolveResult] = []
    for fam, _, proto, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        reason = why_forbidden(address, allow_private=allow_private)
        if reason:
            raise ForbiddenAddress(f"callback host {host} resolves to {address} ({reason})")
        results.append(ResolveResult(hostname=host, host=str(sockaddr[0]), port=port, family=fam,
                                     proto=proto, flags=socket.AI_NUMERICHOST))
    if not results:
        raise OSError(f"cannot resolve {host}: no addresses")
    return results


# The addresses checked for the request running in this context (set by the sender just
# before it posts); the resolver hands exactly these to the connector.
PINNED: contextvars.ContextVar[dict[str, list[ResolveResult]] | None] = contextvars.ContextVar("webhook_pins", default=None)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that only ever yields checked addresses."""

    def __init__(self, allow_private: Callable[[], bool]) -> None:
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        pins = PINNED.get()
        if pins and host in pins:
            return [dict(r, port=port) for r in pins[host]]  # type: ignore[misc]
        return await resolve_checked(host, port, allow_private=self.allow_private(), family=family)

    async def close(self) -> None:
        return None
