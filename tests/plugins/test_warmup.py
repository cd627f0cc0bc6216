"""warmup plugin pieces: config validation, schedules, provider recognition, throttle patterns,
store budgets (atomic across two "nodes" on one store), holds, feedback, CLI and metrics."""
from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from gateway.cli import main
from gateway.config import parse as parse_config
from gateway.store.sqlite import SqliteStore
from gateway.testing import make_config
from gateway.warmup_budget import Budgets
from gateway.warmup_config import local_errors, parse
from gateway.warmup_providers import BUILTIN_PROVIDERS, DEFAULT_THROTTLE_PATTERNS, compile_patterns, is_throttling, recognise
from gateway.warmup_schedules import BUILTIN_SCHEDULES
from gateway_plugins import warmup as plugin

START = dt.date(2026, 11, 20)
NOON = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone.utc).timestamp()   # day 1, 12:00 UTC


def settings_for(tmp_path, warmup: str, accounts: str = ""):
    config = parse_config(make_config(tmp_path, 2525, extra="[plugins.warmup]\n" + warmup, accounts=accounts, dkim=False),
                          path="t.toml", env={})
    settings, errors = parse(config)
    return config, settings, errors


POOL = f'''
[plugins.warmup.pools.default]
ips = [{{ ip = "127.0.0.2", start = {START} }}, {{ ip = "127.0.0.3", warmed = true }}]
'''


# --------------------------------------------------------------------------- config


def test_no_table_means_no_settings(tmp_path):
    config = parse_config(make_config(tmp_path, 2525, dkim=False), path="t.toml", env={})
    assert parse(config) == (None, [])
    assert plugin.gateway_validate_config(config) is None


@pytest.mark.parametrize("warmup, message", [
    ("", "plugins.warmup.pools: must be a table with at least one pool"),
    ("colour = 1\n" + POOL, "plugins.warmup.colour: unknown key"),
    ('[plugins.warmup.pools.default]\nips = [{ ip = "300.1.1.1", warmed = true }]', "not an IPv4 or IPv6 address"),
    ('[plugins.warmup.pools.default]\nips = [{ ip = "127.0.0.2" }]', "give either start = YYYY-MM-DD (warming) or warmed = true"),
    ('[plugins.warmup.pools.default]\nips = [{ ip = "127.0.0.2", start = "20th" }]', "expected a date YYYY-MM-DD"),
    ('[plugins.warmup.pools.default]\nschedule = "fast"\nips = ["127.0.0.2"]', "no schedule named 'fast'"),
    ('[plugins.warmup.pools.default]\noverflow = "some"\nips = ["127.0.0.2"]', "overflow: must be one of triggered, all, none"),
    ('[plugins.warmup.pools.a]\nips = ["127.0.0.2"]\n[plugins.warmup.pools.b]\nips = ["127.0.0.2"]', "already in pool 'a'"),
    ('default_pool = "x"\n' + POOL, "default_pool: no pool named 'x'"),
    ('provider_share = 2\n' + POOL, "provider_share: must be a number above 0 and at most 1"),
    ('backoff = "soon"\n' + POOL, "plugins.warmup.backoff: expected a duration"),
    ('timezone = "Mars/Olympus"\n' + POOL, "unknown time zone"),
    ('throttle_patterns = ["(("]\n' + POOL, "throttle_patterns: '((':"),
    ('[plugins.warmup.domains]\n"news.example.com" = "nope"\n' + POOL, "domains.news.example.com: no pool named 'nope'"),
    ('[plugins.warmup.schedules.s]\ndaily = [1, 2]\nhourly = [1]\n' + POOL, "schedules.s: hourly: must be an array"),
    ('[plugins.warmup.schedules.s]\ndaily = []\n' + POOL, "schedules.s: daily: must be a non-empty array"),
    ('[plugins.warmup.providers.gmail]\nshare = 0\n' + POOL, "providers.gmail.share: must be a number above 0"),
    ('[plugins.warmup.providers.other]\nshare = 0.5\n' + POOL, "providers.other: reserved"),
])
def test_config_errors_are_one_line_naming_the_key(tmp_path, warmup, message):
    _, settings, errors = settings_for(tmp_path, warmup)
    assert settings is None and errors
    assert message in errors[0], errors
    assert errors[0].startswith("t.toml: ") and "\n" not in errors[0]


def test_account_pool_mapping_and_sender_domains(tmp_path):
    warmup = POOL + '''
[plugins.warmup.pools.news]
ips = [{ ip = "::1", start = 2026-11-20, schedule = "manual" }]
[plugins.warmup.domains]
"news.example.com" = "news"
'''
    config, settings, errors = settings_for(tmp_path, warmup, accounts='[accounts.app.warmup]\npool = "news"\n')
    assert errors == []
    assert settings.pool_for("app", "a@example.com").name == "news"            # account
    assert settings.pool_for("other", "a@news.example.com").name == "news"     # sender domain
    assert settings.pool_for(None, "").name == "default"                        # default pool (DSNs)
    assert settings.pools["news"].ips[0].schedule.name == "manual" and settings.pools["news"].ips[0].family == 6
    _, _, errors = settings_for(tmp_path, POOL, accounts='[accounts.app.warmup]\npool = "nope"\n')
    assert "accounts.app.warmup.pool: no pool named 'nope'" in errors[0]


def test_local_check(tmp_path):
    config, settings, _ = settings_for(tmp_path, POOL.replace("127.0.0.3", "192.0.2.1"))
    errors = local_errors(config, settings)
    assert len(errors) == 1 and "192.0.2.1 is not an address of this host" in errors[0]
    assert plugin.gateway_validate_config(config) == errors
    config, settings, _ = settings_for(tmp_path, "check_local = false\n" + POOL.replace("127.0.0.3", "192.0.2.1"))
    assert local_errors(config, settings) == []


# --------------------------------------------------------------------------- schedules and providers


def test_shipped_schedules():
    standard = BUILTIN_SCHEDULES["tencent-standard"]
    assert standard.daily_cap(1) == 500 and standard.daily_cap(10) == 100_000 and standard.daily_cap(20) == 1_000_000
    assert standard.daily_cap(21) is None and standard.hourly_cap(1) is None and standard.daily_cap(0) == 0
    manual = BUILTIN_SCHEDULES["manual"]
    assert [manual.daily_cap(d) for d in range(1, 6)] == [1_000, 1_500, 2_000, 3_000, 4_500]
    assert [manual.hourly_cap(d) for d in range(1, 6)] == [200, 200, 400, 400, 500]
    assert manual.daily_cap(6) == 6_000 and manual.daily_cap(10) == 8_000 and manual.hourly_cap(10) == 1_000
    assert manual.daily_cap(30) == 25_000 and manual.hourly_cap(30) == 5_000 and manual.days == 30
    assert list(manual.daily) == sorted(manual.daily)


@pytest.mark.parametrize("hosts, domain, provider", [
    (["gmail-smtp-in.l.google.com"], "gmail.com", "gmail"),
    (["aspmx.l.google.com", "alt1.aspmx.l.google.com"], "company.example", "gmail"),        # Workspace
    (["company-example.mail.protection.outlook.com"], "company.example", "microsoft"),      # Microsoft 365
    (["hotmail-com.olc.protection.outlook.com"], "hotmail.com", "microsoft"),
    (["mta5.am0.yahoodns.net"], "yahoo.com", "yahoo"),
    (["mx-aol.mail.gm0.yahoodns.net"], "aol.com", "yahoo"),
    (["mx1.qq.com"], "qq.com", "qq"),
    (["mxbiz1.qq.com"], "corp.example", "qq"),                                               # Tencent Exmail
    (["163mx01.mxmail.netease.com"], "163.com", "netease"),
    (["126mx00.mxmail.netease.com"], "126.com", "netease"),
    (["mx01.mail.icloud.com"], "icloud.com", "apple"),
    (["mx.example.net"], "example.net", "other"),
    (None, "gmail.com", "gmail"),                                                            # no DNS: by domain
    (None, "hotmail.co.uk", "microsoft"),
])
def test_provider_recognition(hosts, domain, provider):
    assert recognise(BUILTIN_PROVIDERS, hosts, domain) == provider


@pytest.mark.parametrize("code, enhanced, text, throttled", [
    (421, "4.7.0", "Try again later, closing connection. (gsmtp)", True),
    (421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail", True),
    (451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation", True),
    (421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume", True),
    (451, "4.0.0", "Too many messages from this IP, slow down", True),
    (450, "4.0.0", "MI:SFQ http://mail.163.com/help/help_spam_16.htm", True),
    (550, "5.0.0", "Ip frequency limited", True),
    (450, "4.2.0", "Mailbox busy", False),
    (550, "5.1.1", "User unknown", False),
    (250, "2.0.0", "Ok", False),
    (0, "4.7.5", "TLS failed: rate", False),                    # our own failure, no reply
])
def test_throttle_patterns(code, enhanced, text, throttled):
    patterns, error = compile_patterns(None)
    assert error is None and len(patterns) == len(DEFAULT_THROTTLE_PATTERNS)
    assert is_throttling(patterns, code, enhanced, text) is throttled


# --------------------------------------------------------------------------- budgets


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    yield store
    await store.close()


async def test_two_nodes_share_one_budget_exactly(tmp_path, store):
    """Two gateways on one store racing for one IP's day-1 budget: exactly the cap, never more."""
    _, settings, _ = settings_for(tmp_path, '[plugins.warmup.schedules.s]\ndaily = [25]\n' + POOL.replace(
        "[plugins.warmup.pools.default]", '[plugins.warmup.pools.default]\nschedule = "s"'))
    other = SqliteStore(str(tmp_path / "state.db"))
    await other.open()
    try:
        nodes = [Budgets(store, settings), Budgets(other, settings)]
        egress = settings.pools["default"].ips[0]

        async def take(node: Budgets) -> bool:
            caps = await node.caps(egress, "other", NOON)
            return await node.reserve(egress, "other", caps, NOON) is not None

        results = await asyncio.gather(*(take(nodes[i % 2]) for i in range(60)))
        assert sum(results) == 25
        assert (await nodes[1].usage(egress.ip, "other", NOON)).daily == 25
    finally:
        await other.close()


async def test_hourly_cap_holds_until_next_hour_and_providers_split(tmp_path, store):
    warmup = '''
provider_share = 0.5
[plugins.warmup.schedules.s]
daily = [10, 20]
hourly = [3, 6]
''' + POOL.replace("[plugins.warmup.pools.default]", '[plugins.warmup.pools.default]\nschedule = "s"')
    _, settings, _ = settings_for(tmp_path, warmup)
    budgets = Budgets(store, settings)
    pool = settings.pools["default"]
    picks = [await plugin.choose(budgets, pool, "gmail", None, NOON, triggered=False) for _ in range(4)]
    assert [p.ip for p in picks[:3]] == ["127.0.0.2"] * 3
    until, why = picks[3]
    assert until == NOON + 3600 and "until the next hour" in why
    # The next hour: two more for gmail (half of 10 = 5 a day), then gmail waits for tomorrow…
    later = NOON + 3600
    picks = [await plugin.choose(budgets, pool, "gmail", None, later, triggered=False) for _ in range(3)]
    assert [getattr(p, "ip", None) for p in picks[:2]] == ["127.0.0.2"] * 2
    assert "gmail until the next day" in picks[2][1]
    # …while microsoft has its own half; triggered gmail mail overflows to the warmed IP.
    assert (await plugin.choose(budgets, pool, "microsoft", None, later, triggered=False)).ip == "127.0.0.2"
    overflow = await plugin.choose(budgets, pool, "gmail", None, later, triggered=True)
    assert overflow.ip == "127.0.0.3" and overflow.warmed
    # Address families: an IPv4-only MX never gets an IPv6 source (and vice versa).
    assert "address family" in (await plugin.choose(budgets, pool, "gmail", {6}, later, triggered=True))[1]


async def test_throttling_pauses_and_holds_the_level(tmp_path, store):
    warmup = "provider_share = 1.0\n" + POOL
    _, settings, _ = settings_for(tmp_path, warmup)
    budgets = Budgets(store, settings)
    egress = settings.pools["default"].ips[0]
    until = await budgets.pause(egress, "gmail", NOON, "421 4.7.28 unusual rate")
    assert until == NOON + 600
    assert await budgets.paused_until(egress.ip, "gmail", NOON + 599) == until
    assert await budgets.paused_until(egress.ip, "gmail", NOON + 600) is None
    assert await budgets.paused_until(egress.ip, "microsoft", NOON) is None
    # Day 2: gmail stays at day 1's level (500), the others step up to 1,000.
    day2 = NOON + 86400
    assert (await budgets.caps(egress, "gmail", day2)).provider == 500
    assert (await budgets.caps(egress, "microsoft", day2)) == type(await budgets.caps(egress, "gmail", day2))(1000, None, None)
    # Day 3: the hold has run out.
    assert (await budgets.caps(egress, "gmail", day2 + 86400)).provider is None
    # While paused, triggered gmail mail takes the warmed IP; when that is paused too, it waits for the pause.
    pool = settings.pools["default"]
    assert (await plugin.choose(budgets, pool, "gmail", None, NOON + 1, triggered=True)).ip == "127.0.0.3"
    await budgets.pause(pool.ips[1], "gmail", NOON + 1, "421 4.7.0 try again later")
    until, why = await plugin.choose(budgets, pool, "gmail", None, NOON + 2, triggered=True)
    assert until == NOON + 600 and "paused for gmail" in why


def pool_from_today() -> str:
    return POOL.replace(str(START), str(dt.datetime.now(dt.timezone.utc).date()))


async def test_status_cli_and_json(tmp_path, capsys):
    config_text = make_config(tmp_path, 2525, dkim=False, extra="[plugins.warmup]\ncheck_local = false\n" + pool_from_today())
    path = tmp_path / "gw.toml"
    path.write_text(config_text)
    config = parse_config(config_text, path=str(path), env={})
    settings, _ = parse(config)
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    budgets = Budgets(store, settings)
    egress = settings.pools["default"].ips[0]
    for _ in range(3):
        await budgets.reserve(egress, "gmail", await budgets.caps(egress, "gmail", now), now)
    await budgets.pause(egress, "gmail", now, "421 4.7.0 slow down")
    await store.close()

    assert await asyncio.to_thread(main, ["warmup", "status", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "127.0.0.2  pool default  schedule tencent-standard" in out
    assert "gmail      3/" in out and "paused until" in out and "next level: day" in out
    assert "127.0.0.3" in out and "warm" in out
    assert await asyncio.to_thread(main, ["warmup", "status", "-c", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["ips"]
    assert rows[0]["providers"]["gmail"]["sent"] == 3 and rows[0]["paused"] == ["gmail"]
    assert rows[0]["day"] == 1 and rows[0]["daily_cap"] == 500 and rows[0]["next_level"]["daily_cap"] == 1000


def test_status_cli_config_error_exits_78(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text(make_config(tmp_path, 2525, dkim=False, extra="[plugins.warmup]\nbackoff = \"x\"\n" + POOL))
    assert main(["warmup", "status", "-c", str(path)]) == 78
    assert "plugins.warmup.backoff" in capsys.readouterr().err


async def test_metrics_families(tmp_path):
    from gateway.testing import GatewayHarness

    config_text = make_config(tmp_path, 2525, extra="[plugins.warmup]\n" + pool_from_today())
    async with GatewayHarness(config_text) as gw:
        families = await plugin.gateway_metrics(gw.gateway)
        names = {f.name for f in families}
        assert {"sesgw_warmup_sent_today", "sesgw_warmup_daily_cap", "sesgw_warmup_day"} <= names
        caps = next(f for f in families if f.name == "sesgw_warmup_daily_cap")
        assert [(s.labels["ip"], s.value) for s in caps.samples] == [("127.0.0.2", 500)]


def test_example_block_in_shipped_config_validates(tmp_path):
    """The commented [plugins.warmup] example of config/gateway.toml, uncommented, is a valid setup."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "config" / "gateway.toml").read_text()
    block = text[text.index("# [plugins.warmup]\n"):text.index("# Per account: [accounts.app.warmup]")]
    lines = [line[2:] if line.startswith("# ") else line[1:] for line in block.splitlines()]
    warmup = "\n".join(lines[1:]).replace("check_local = true", "check_local = false")
    _, settings, errors = settings_for(tmp_path, warmup)
    assert errors == [] and settings is not None
    pool = settings.pools["default"]
    assert [ip.ip for ip in pool.ips] == ["203.0.113.10", "2001:db8::10", "203.0.113.11"]
    assert settings.share("gmail") == 0.4 and settings.share("microsoft") == 0.5
