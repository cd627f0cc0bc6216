"""MxResolver against a real (local, authoritative) DNS server."""
from __future__ import annotations

import pytest

from gateway.testing.dns import DnsServer
from gateway.transports.mx import MxError, MxResolver

ZONE = {
    "example.net": {"MX": ["20 mx2.example.net.", "10 mx1.example.net."]},
    "mx1.example.net": {"A": ["127.0.0.2"]},
    "mx2.example.net": {"A": ["127.0.0.3"], "AAAA": ["::1"]},
    "equal.test": {"MX": ["10 a.equal.test.", "10 b.equal.test.", "10 c.equal.test.", "20 z.equal.test."]},
    "a.equal.test": {"A": ["127.0.0.11"]},
    "b.equal.test": {"A": ["127.0.0.12"]},
    "c.equal.test": {"A": ["127.0.0.13"]},
    "z.equal.test": {"A": ["127.0.0.14"]},
    "implicit.test": {"A": ["127.0.0.5"]},
    "nullmx.test": {"MX": ["0 ."]},
    "broken.test": {"SERVFAIL": True},
    "slow.test": {"TIMEOUT": True},
    "public.test": {"MX": ["10 mx.public.test."]},
    "mx.public.test": {"A": ["10.1.2.3", "93.184.216.34"]},
    "private.test": {"MX": ["10 mx.private.test."]},
    "mx.private.test": {"A": ["10.1.2.3"], "AAAA": ["fe80::1"]},
    "empty.test": {"TXT": ["v=spf1 -all"]},
    "dangling.test": {"MX": ["10 nowhere.dangling.test."]},
}


@pytest.fixture
async def dns():
    async with DnsServer(ZONE) as server:
        yield server


def resolver(dns: DnsServer, *, allow_local: bool = True) -> MxResolver:
    return MxResolver((("127.0.0.1", dns.port),), 1.0, allow_local)


async def test_preference_order_with_addresses(dns):
    hosts = await resolver(dns).resolve("Example.NET.")
    assert hosts == [("mx1.example.net", ["127.0.0.2"]), ("mx2.example.net", ["127.0.0.3", "::1"])]


async def test_equal_preferences_are_shuffled_but_stay_ahead(dns):
    mx = resolver(dns)
    firsts = set()
    for _ in range(40):
        names = [name for name, _ in await mx.resolve("equal.test")]
        assert sorted(names[:3]) == ["a.equal.test", "b.equal.test", "c.equal.test"]
        assert names[3] == "z.equal.test"
        firsts.add(names[0])
    assert len(firsts) > 1


async def test_answers_are_cached(dns):
    mx = resolver(dns)
    await mx.resolve("example.net")
    count = len(dns.queries)
    for _ in range(5):
        await mx.resolve("example.net")
    assert len(dns.queries) == count


async def test_no_mx_means_implicit_mx(dns):
    assert await resolver(dns).resolve("implicit.test") == [("implicit.test", ["127.0.0.5"])]


async def test_null_mx_bounces(dns):
    with pytest.raises(MxError) as info:
        await resolver(dns).resolve("nullmx.test")
    assert info.value.result.status == "bounced"
    assert info.value.result.enhanced == "5.1.10"


async def test_nxdomain_bounces(dns):
    with pytest.raises(MxError) as info:
        await resolver(dns).resolve("no-such-domain.test")
    assert (info.value.result.status, info.value.result.enhanced) == ("bounced", "5.1.2")


async def test_no_mx_and_no_address_bounces(dns):
    with pytest.raises(MxError) as info:
        await resolver(dns).resolve("empty.test")
    assert (info.value.result.status, info.value.result.enhanced) == ("bounced", "5.1.2")


@pytest.mark.parametrize("domain", ["broken.test", "slow.test"])
async def test_servfail_and_timeout_defer(dns, domain):
    mx = MxResolver((("127.0.0.1", dns.port),), 0.3, True)
    with pytest.raises(MxError) as info:
        await mx.resolve(domain)
    assert (info.value.result.status, info.value.result.enhanced) == ("deferred", "4.4.3")


async def test_unresolvable_mx_host_defers(dns):
    with pytest.raises(MxError) as info:
        await resolver(dns).resolve("dangling.test")
    assert info.value.result.status == "deferred"


async def test_local_addresses_are_refused_unless_allowed(dns):
    with pytest.raises(MxError) as info:
        await resolver(dns, allow_local=False).resolve("private.test")
    assert info.value.result.status == "deferred"
    with pytest.raises(MxError):
        await resolver(dns, allow_local=False).resolve("example.net")
    # Only the public address of a mixed host is kept.
    assert await resolver(dns, allow_local=False).resolve("public.test") == [("mx.public.test", ["93.184.216.34"])]
    assert await resolver(dns, allow_local=True).resolve("private.test") == [("mx.private.test", ["10.1.2.3", "fe80::1"])]


async def test_address_literal_needs_no_dns(dns):
    assert await resolver(dns).resolve("[127.0.0.9]") == [("127.0.0.9", ["127.0.0.9"])]
    assert dns.queries == []
