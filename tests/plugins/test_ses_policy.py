"""ses_policy units: settings and their validation, the day and midnight in a time zone, the
header contract, atomic counting in the store (issue 4)."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from gateway import ses_limits, ses_settings
from gateway.config import parse
from gateway.message import Message
from gateway.ses_headers import HeaderError, parse as parse_headers, strip
from gateway.store.sqlite import SqliteStore
from gateway.testing import make_config


def config_with(tmp_path, policy="", accounts=""):
    return parse(make_config(tmp_path, 1, accounts=accounts, extra=f"[plugins.ses_policy]\n{policy}\n"), path="t.toml")


def test_defaults_and_account_overrides(tmp_path):
    config = config_with(tmp_path, 'send_rate = "100/s"', "[accounts.app.ses_policy]\ndaily_limit = 1000\n")
    rule = ses_settings.for_account(config, "app")
    assert rule is not None and (rule.daily_limit, rule.send_rate, rule.recipient_hourly_limit) == (1000, 100.0, 10)
    assert ses_settings.for_account(config, None) is None
    off = config_with(tmp_path, "enabled = false")
    assert ses_settings.for_account(off, "app") is None
    # No table at all: SES's documented defaults apply (SES enforces its limits always).
    plain = ses_settings.for_account(parse(make_config(tmp_path, 1, extra="[plugins.ses_policy]\n"), path="t.toml"), "app")
    assert plain is not None and (plain.daily_limit, plain.recipient_hourly_limit, plain.max_recipients) == (300_000, 10, 50)


@pytest.mark.parametrize("policy,accounts,message", [
    ("daily_limit = 0", "", "plugins.ses_policy.daily_limit: must be an integer >= 1"),
    ('send_rate = "fast"', "", "plugins.ses_policy.send_rate: expected a rate"),
    ("pause_blocklist_share = 8", "", "plugins.ses_policy.pause_blocklist_share: must be a fraction"),
    ('timezone = "Mars/Olympus"', "", "plugins.ses_policy.timezone: unknown time zone"),
    ('template_dir = "/nonexistent"', "", "plugins.ses_policy.template_dir: '/nonexistent' is not a directory"),
    ("colour = 1", "", "plugins.ses_policy.colour: unknown key"),
    ("", '[accounts.app.ses_policy]\ntimezone = "UTC"\n', "accounts.app.ses_policy.timezone: unknown key"),
])
def test_validation_errors(tmp_path, policy, accounts, message):
    errors = ses_settings.validate(config_with(tmp_path, policy, accounts))
    assert len(errors) == 1 and errors[0].startswith("t.toml: ") and message in errors[0]


def test_check_config_exits_78_on_a_bad_policy(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(make_config(tmp_path, 1, extra="[plugins.ses_policy]\nmax_recipients = -1\n"))
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78 and "plugins.ses_policy.max_recipients" in result.stderr


def test_day_and_midnight_follow_the_time_zone():
    t = 1795737600.0                                        # 2026-11-27 00:00 UTC = 08:00 Shanghai
    assert ses_settings.day_of(t - 1, "UTC") == "2026-11-26"
    assert ses_settings.day_of(t - 1, "Asia/Shanghai") == "2026-11-27"
    assert ses_settings.next_midnight(t - 1, "UTC") == t
    assert ses_settings.next_midnight(t, "Asia/Shanghai") == t + 16 * 3600
    # DST: 2026-03-08 in New York has 23 hours; midnight is still a midnight.
    assert ses_settings.next_midnight(1772946000.0 + 3600, "America/New_York") == 1773028800.0


def test_header_contract_parsing():
    message = Message.parse(b"X-SES-Template-Id: 12\r\nX-SES-Template-Data: b64:eyJhIjoiYiJ9\r\n"
                            b"X-SES-Tags: a=1,b=two\r\nX-Ses-Whatever: x\r\nSubject: s\r\n\r\nbody")
    headers = parse_headers(message)
    assert (headers.template_id, headers.template_data, headers.tags) == (12, '{"a":"b"}', {"a": "1", "b": "two"})
    assert headers.meta() == {"trigger_type": 0, "template_id": 12, "tags": {"a": "1", "b": "two"}}
    assert strip(message) == 4 and list(message.names()) == ["subject"]
    with pytest.raises(HeaderError, match="X-SES-Template-Data has a b64: prefix"):
        parse_headers(Message.parse(b"X-SES-Template-Id: 1\r\nX-SES-Template-Data: b64:***\r\n\r\n"))
    with pytest.raises(HeaderError, match="X-SES-Callback-Custom"):
        parse_headers(Message.parse(b"X-SES-Callback-Custom: " + b"x" * 1001 + b"\r\n\r\n"))


async def test_reservations_are_atomic_in_the_store(tmp_path):
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        taken = await asyncio.gather(*(ses_limits.reserve(store, "k", 10, 60) for _ in range(50)))
        assert sum(r is not None for r in taken) == 10 and await store.get_counter("k") == 10
        await ses_limits.refund(store, [r for r in taken if r is not None][:3])
        assert await store.get_counter("k") == 7
        window, capacity = ses_limits.rate_window(0.5)
        assert (window, capacity) == (2.0, 1)
        assert await ses_limits.take_send_slot(store, "app", 2, 100.2) is None
        assert await ses_limits.take_send_slot(store, "app", 2, 100.5) is None
        assert await ses_limits.take_send_slot(store, "app", 2, 100.7) == 101.0
    finally:
        await store.close()
