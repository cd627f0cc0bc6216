"""Configuration: units, fixed keys, one-line errors with exit status 78, open-relay refusal."""
from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, parse
from gateway.testing import make_config
from gateway.units import parse_duration, parse_rate, parse_size


@pytest.mark.parametrize("text,value", [("25MB", 25_000_000), ("10MiB", 10 * 1024 * 1024), ("512", 512), (4096, 4096)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text,value", [("72h", 259200), ("1h30m", 5400), ("500ms", 0.5), ("30s", 30), (5, 5.0)])
def test_durations(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("text,value", [("20/s", 20), ("10/h", 10 / 3600), ("300/min", 5)])
def test_rates(text, value):
    assert parse_rate(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["fast", "10 parsecs", "", "-1s", True])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_fixed_keys_parse(tmp_path):
    text = make_config(tmp_path, 2526, accounts='password = { env = "APP_SMTP_PASSWORD" }\ncallback_url = "https://app.example.com/ses-events"',
                       extra='[http]\naddress = "127.0.0.1:8025"\npublic_url = "https://gw.example.com"\n')
    config = parse(text, env={"APP_SMTP_PASSWORD": "s3cret"})
    assert config.hostname == "gw.example.com"
    assert config.listeners[0].mode == "relay" and config.listeners[0].account == "app"
    assert config.accounts["app"].domains == ("example.com",)
    assert config.accounts["app"].password.value == "s3cret"
    assert "s3cret" not in repr(config.accounts["app"]) and "s3cret" not in str(config.accounts["app"].password)
    assert config.delivery.smarthost_port == 2526
    assert config.http.public_url == "https://gw.example.com"


def error_of(text: str, env=None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, path="gw.toml", env=env or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_key_and_line(tmp_path):
    text = make_config(tmp_path, 2526, server="colour = \"blue\"")
    message = error_of(text)
    assert "server.colour: unknown key" in message
    line = [i for i, l in enumerate(text.splitlines(), 1) if l.startswith("colour")][0]
    assert message.startswith(f"gw.toml:{line}:")


@pytest.mark.parametrize("mutation,fragment", [
    (("max_recipients = 50", 'max_recipients = "many"'), "limits.max_recipients: expected an integer"),
    (("max_recipients = 50", "max_recipients = 0"), "limits.max_recipients: must be at least 1"),
    (('retry_initial = "200ms"', 'retry_initial = "soon"'), "delivery.retry_initial: expected a duration"),
    (('mode = "relay"', 'mode = "open"'), "listener[0].mode: must be one of relay, submission, smtps"),
    (('networks = ["127.0.0.0/8"]', 'networks = ["0.0.0.0/0"]'), "would make this listener an open relay"),
    (('networks = ["127.0.0.0/8"]', 'networks = ["::/0"]'), "would make this listener an open relay"),
    (('networks = ["127.0.0.0/8"]', "networks = []"), "needs an allowlist of networks"),
    (('state = "sqlite:///', 'state = "mysql:///'), "server.state: expected"),
    (('state = "sqlite:///', 'state = "redis://127.0.0.1:6379/0#'), "the Redis backend is not available"),
    (('account = "app"', 'account = "nobody"'), "no [accounts.nobody]"),
])
def test_bad_values(tmp_path, mutation, fragment):
    text = make_config(tmp_path, 2526, limits="max_recipients = 50")
    assert mutation[0] in text
    assert fragment in error_of(text.replace(mutation[0], mutation[1], 1))


def test_submission_listener_needs_tls(tmp_path):
    text = make_config(tmp_path, 2526).replace('mode = "relay"', 'mode = "submission"')
    assert "needs tls_cert and tls_key" in error_of(text)


def test_missing_env_secret(tmp_path):
    text = make_config(tmp_path, 2526, accounts='password = { env = "NOPE_NOT_SET" }')
    assert "environment variable NOPE_NOT_SET is not set" in error_of(text)


def test_secret_from_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    config = parse(make_config(tmp_path, 2526, accounts=f'password = {{ file = "{secret}" }}'), env={})
    assert config.accounts["app"].password.value == "from-file"


def test_plaintext_smarthost_needs_explicit_opt_in(tmp_path):
    text = make_config(tmp_path, 2526).replace("smarthost_insecure = true\n", "")
    assert "smarthost_insecure = true" in error_of(text)


def test_toml_syntax_error_has_line(tmp_path):
    text = make_config(tmp_path, 2526) + "\n[broken\n"
    assert error_of(text).startswith("gw.toml:")


def test_cli_exit_78_with_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(make_config(tmp_path, 2526).replace('mode = "relay"', 'mode = "open"'))
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert result.stderr.count("\n") == 1 and "listener[0].mode" in result.stderr
    run = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 78


def test_cli_version():
    result = subprocess.run([sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("ses-gateway ")
