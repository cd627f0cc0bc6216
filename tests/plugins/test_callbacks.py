"""Unit tests of the callbacks plugin's parts: payload mapping, signatures (with the docs
snippet), SSRF guard, settings, retry schedule and Retry-After."""
from __future__ import annotations

import base64
import email.utils
import json
import time

import aiohttp
import pytest
from callbacks_receiver import Receiver, docs_verify, tencent_sample_handler

from gateway.config import parse
from gateway.events import Event
from gateway.testing import make_config
from gateway.webhooks_payload import EVENT_IDS, payload
from gateway.webhooks_sender import retry_after
from gateway.webhooks_settings import Options, load
from gateway.webhooks_signing import SignatureError, generate_secret, secret_key, sign_headers, verify
from gateway.webhooks_ssrf import PINNED, ForbiddenAddress, GuardedResolver, check_url, resolve_checked


def event(name: str = "bounce", **kw: object) -> Event:
    base = dict(email="to@example.net", message_id="sesgw-1", account="app", reason="550 5.1.1 user unknown",
                bounce_type="hard_bounce", sender="app@example.com", from_domain="example.com", template_id="123456",
                subject="hello", smtp_message_id="m1@example.com", custom="order-42", tags={"k": "v"},
                timestamp=1654064683.7)
    base.update(kw)
    return Event(name, **base)  # type: ignore[arg-type]


# -- payload ---------------------------------------------------------------------------------------
def test_payload_uses_tencent_field_names_and_types() -> None:
    body = payload(event())
    assert body == {"event": "bounce", "email": "to@example.net", "bulkId": "sesgw-1", "timestamp": 1654064683,
                    "reason": "550 5.1.1 user unknown", "bounceType": "hard_bounce", "username": "app",
                    "from": "app@example.com", "fromDomain": "example.com", "templateId": 123456, "subject": "hello",
                    "messageId": "m1@example.com", "eventid": 3, "X-Tencentcloudses-Cb-Custom": "order-42",
                    "id": body["id"], "tags": {"k": "v"}}
    assert body["id"].startswith("evt_")


def test_eventid_numbers_are_tencents() -> None:
    # ses-semantics.md §5.2: 1 delivered 2 dropped 3 bounce 4 open 5 click 6 spamreport 7 unsubscribe 8 deferred
    assert [EVENT_IDS[n] for n in ("delivered", "dropped", "bounce", "open", "click", "spamreport", "unsubscribe",
                                   "deferred")] == list(range(1, 9))
    assert EVENT_IDS["processed"] == 0


def test_click_and_open_fields_and_encoded_subject() -> None:
    click = payload(event("click", link="https://x.example/a", useragent="Mozilla", subject="你好", template_id=""))
    assert click["link"] == "https://x.example/a" and click["useragent"] == "Mozilla"
    assert click["subject"] == "=?utf-8?b?5L2g5aW9?=" and click["templateId"] == 0
    assert "link" not in payload(event("delivered")) and "useragent" not in payload(event("delivered"))


def test_tencent_sample_style_receiver_parses_payload() -> None:
    record = tencent_sample_handler(json.dumps(payload(event())).encode())
    assert record["bulkId"] == "sesgw-1" and record["eventid"] == 3 and record["custom"] == "order-42"


# -- signatures ----------------------------------------------------------------------------------------
def test_standard_webhooks_signature_and_docs_snippet() -> None:
    secret = generate_secret()
    body = json.dumps(payload(event())).encode()
    headers = sign_headers([secret_key(secret)], "evt_1", body)
    verify(secret, headers, body)
    snippet = docs_verify()
    assert snippet(secret, headers, body)
    assert not snippet(secret, headers, body + b" ")
    assert not snippet(generate_secret(), headers, body)
    with pytest.raises(SignatureError):
        verify(secret, headers, body.replace(b"bounce", b"bouncE"))


def test_known_vector() -> None:
    # Standard Webhooks reference vector (standard-webhooks spec test suite).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = sign_headers([secret_key(secret)], "msg_p5jXN8AQM9LWM0D4loKWxJek", body, 1614265330)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_rotation_signs_with_both_secrets() -> None:
    new, old = generate_secret(), generate_secret()
    body = b"{}"
    headers = sign_headers([secret_key(new), secret_key(old)], "evt_2", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    snippet = docs_verify()
    assert snippet(new, headers, body) and snippet(old, headers, body)


def test_stale_timestamp_is_refused() -> None:
    secret = generate_secret()
    headers = sign_headers([secret_key(secret)], "evt_3", b"{}", int(time.time()) - 3600)
    assert not docs_verify()(secret, headers, b"{}")
    with pytest.raises(SignatureError):
        verify(secret, headers, b"{}")


def test_secret_shape() -> None:
    with pytest.raises(ValueError):
        secret_key("not-a-secret")
    with pytest.raises(ValueError):
        secret_key("whsec_" + base64.b64encode(b"short").decode())


# -- SSRF guard --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://2130706433/hook", "http://0177.0.0.1/hook", "http://0x7f.1/", "http://127.1/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/",
    "http://[fd00::1]/", "http://10.1.2.3/", "http://192.168.0.1/", "http://100.64.0.1/", "http://0.0.0.0/",
    "http://[fe80::1]/", "http://224.0.0.1/", "http://localhost:8080/", "http://[fd00:ec2::254]/",
])
def test_ssrf_refuses_internal_addresses(url: str) -> None:
    assert check_url(url, allow_private=False) is not None


def test_allow_private_keeps_metadata_and_link_local_refused() -> None:
    assert check_url("http://127.0.0.1:8080/hook", allow_private=True) is None
    assert check_url("http://10.0.0.5/hook", allow_private=True) is None
    assert check_url("http://169.254.169.254/", allow_private=True) is not None
    assert check_url("http://[fe80::1]/", allow_private=True) is not None
    assert check_url("https://hooks.example.com/x", allow_private=False) is None
    assert check_url("ftp://hooks.example.com/x", allow_private=False) is not None


async def test_resolution_is_checked_and_pinned() -> None:
    with pytest.raises(ForbiddenAddress):
        await resolve_checked("localhost", 80, allow_private=False)
    async with Receiver() as receiver:
        # The name does not exist anywhere: the request can only succeed through the pin,
        # i.e. the connection goes to exactly the address that was checked.
        pins = await resolve_checked("127.0.0.1", receiver.port, allow_private=True)
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(lambda: False), use_dns_cache=False,
                                         force_close=True)      # no reuse: each post resolves
        async with aiohttp.ClientSession(connector=connector) as session:
            token = PINNED.set({"callbacks.invalid": pins})
            try:
                async with session.post(f"http://callbacks.invalid:{receiver.port}/hook", data=b"{}") as response:
                    assert response.status == 200
            finally:
                PINNED.reset(token)
            with pytest.raises(aiohttp.ClientError):      # without the pin: resolved and refused/unknown
                async with session.post(f"http://callbacks.invalid:{receiver.port}/hook", data=b"{}"):
                    pass
        assert len(receiver.hits) == 1


# -- settings and schedule ----------------------------------------------------------------------------------
def config(tmp_path, accounts: str = "", plugin: str = ""):
    extra = f"[plugins.callbacks]\n{plugin}\n" if plugin else ""
    return parse(make_config(tmp_path, 2525, accounts=accounts, extra=extra), path="t.toml", env={})


def test_settings_targets_sender_url_wins(tmp_path) -> None:
    secret = generate_secret()
    cfg = config(tmp_path, accounts=f'callback_url = "https://a.example.com/h"\n[accounts.app.callbacks]\nsecret = "{secret}"\n'
                 'sender_urls = { "noreply@example.com" = "https://n.example.com/h" }',
                 plugin="retry_initial = \"1s\"")
    settings, errors = load(cfg)
    assert errors == []
    assert settings.target(event(sender="noreply@example.com")).url == "https://n.example.com/h"
    target = settings.target(event(sender="app@example.com"))
    assert target.url == "https://a.example.com/h" and target.keys == (secret_key(secret),)
    assert settings.target(event(account="other")) is None
    assert settings.options.retry_initial == 1.0


@pytest.mark.parametrize("accounts,plugin,fragment", [
    ('callback_url = "http://127.0.0.1:9/h"', "", "loopback"),
    ('callback_url = "http://2130706433/h"', "", "loopback"),
    ('callback_url = "http://169.254.169.254/h"', "allow_private_callbacks = true", "metadata"),
    ('[accounts.app.callbacks]\nsecret = "nope"', "", "whsec_"),
    ('[accounts.app.callbacks]\nsecret = { env = "MISSING_SECRET_VAR" }', "", "MISSING_SECRET_VAR"),
    ('[accounts.app.callbacks]\nbogus = 1', "", "unknown key"),
    ('[accounts.app.callbacks]\nsender_urls = { "noreply@example.com" = "http://10.0.0.1/" }', "", "private"),
    ("", 'retry_initial = "soon"', "retry_initial"),
    ("", "batch_size = 0", "batch_size"),
    ("", "nonsense = 1", "unknown key"),
])
def test_settings_errors(tmp_path, accounts: str, plugin: str, fragment: str) -> None:
    errors = load(config(tmp_path, accounts=accounts, plugin=plugin))[1]
    assert errors and fragment in errors[0] and errors[0].startswith("t.toml: ")


def test_schedule_is_exponential_capped_and_ends_near_72h() -> None:
    options = Options()
    assert [options.nominal_wait(n) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]
    assert options.nominal_wait(30) == 6 * 3600
    assert 8 <= options.backoff(1, rand=lambda: 0.0) <= 12 and options.backoff(1, rand=lambda: 1.0) == 12.0
    last = next(n for n in range(1, 100) if options.exhausted(n))
    total = sum(options.nominal_wait(n) for n in range(1, last))
    assert 66 * 3600 <= total <= 72 * 3600 and last == 23


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after("30", 1000.0) == 1030.0
    now = time.time()
    date = email.utils.formatdate(now + 120, usegmt=True)
    assert abs(retry_after(date, now) - (now + 120)) < 2
    assert retry_after("garbage", now) is None and retry_after(None, now) is None


def test_shipped_config_example_is_valid(tmp_path, monkeypatch) -> None:
    """The commented callbacks blocks of config/gateway.toml, uncommented, are a valid setup
    whose values are the defaults."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "config" / "gateway.toml").read_text()
    block = text[text.index("# [plugins.callbacks]"):]
    plugin, account = block.split("# Per account, next to", 1)
    uncomment = lambda part: "\n".join(re.sub(r"^# ?", "", line) for line in part.splitlines())  # noqa: E731
    monkeypatch.setenv("APP_WEBHOOK_SECRET", generate_secret())
    monkeypatch.setenv("APP_WEBHOOK_SECRET_OLD", generate_secret())
    account_lines = uncomment(account.split("\n", 1)[1]).replace("[accounts.app.callbacks]", "")
    cfg = parse(make_config(tmp_path, 2525, extra=uncomment(plugin),
                            accounts='callback_url = "https://app.example.com/ses-events"\n[accounts.app.callbacks]\n'
                                     + account_lines), path="t.toml", env={})
    settings, errors = load(cfg)
    assert errors == [] and settings.options == Options()
    assert len(settings.accounts["app"].keys) == 2
    assert settings.target(event(sender="noreply@example.com")).url == "https://noreply.example.com/ses-events"
