"""Templates (ses-semantics.md §6): rendering, every error with its SES code, the review
check, and end-to-end replacement of the submitted body (issue 4)."""
from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys

import pytest
from ses_testutil import body, policy_config, transaction

from gateway.message import Message
from gateway.ses_templates import TemplateError, load, load_file, parse_data, render, review
from gateway.testing import GatewayHarness

LONG = ("Thank you for registering with Example Shop. Use the verification code below to finish "
        "setting up your account. The code expires in ten minutes; if you did not ask for it, ignore this mail. ")


@pytest.fixture
def templates(tmp_path):
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "1001.toml").write_text(
        'name = "code"\nsubject = "Your code {{code}}"\n'
        f'text = "Hello {{{{name}}}}, your code is {{{{code}}}}. {LONG}"\n'
        f'html = "<p>Hello {{{{name}}}}, your code is <b>{{{{code}}}}</b>.</p><p>{LONG}</p>"\n')
    (directory / "1002.toml").write_text('text_file = "1002.txt"\n')
    (directory / "1002.txt").write_text("Order {{order}} shipped.\n")
    (directory / "1003.toml").write_text('text = "broken {{ name "\n')
    return directory


def test_render_replaces_placeholders_and_escapes_html(templates):
    template = load(str(templates), 1001)
    out = render(template, {"name": "Ann & Bob", "code": "123456"}, "ignored")
    assert out.subject == "Your code 123456"
    assert out.text.startswith("Hello Ann & Bob, your code is 123456.")
    assert "<p>Hello Ann &amp; Bob, your code is <b>123456</b>.</p>" in out.html


def test_subject_comes_from_the_message_when_the_template_has_none(templates):
    out = render(load(str(templates), 1002), {"order": "A-7"}, "Shipping {{order}}")
    assert (out.subject, out.text) == ("Shipping A-7", "Order A-7 shipped.\n")


@pytest.mark.parametrize("raw,code", [
    ("{not json", "FailedOperation.WrongContentJson"),
    ('["a"]', "InvalidParameterValue.TemplateDataError"),
    ('{"code": 123456}', "InvalidParameterValue.TemplateDataError"),
    ('{"code": {"x": "y"}}', "InvalidParameterValue.TemplateDataError"),
    ('{"code": "<a href=x>1</a>"}', "InvalidParameterValue.InValidTemplateData"),
])
def test_bad_data(raw, code):
    with pytest.raises(TemplateError) as info:
        parse_data(raw)
    assert info.value.code == code


def test_missing_variable_and_unknown_or_broken_templates(templates):
    with pytest.raises(TemplateError, match="no value for code") as info:
        render(load(str(templates), 1001), {"name": "x"}, None)
    assert info.value.code == "InvalidParameterValue.TemplateDataError"
    for template_id in (9999, 1003):
        with pytest.raises(TemplateError) as info:
            load(str(templates), template_id)
        assert info.value.code == "FailedOperation.InvalidTemplateID"
    with pytest.raises(TemplateError, match="no template_dir"):
        load(None, 1001)


def test_sandbox_blocks_attribute_escapes(tmp_path):
    (tmp_path / "7.toml").write_text('text = "{{ name.__class__.__mro__ }}"\n')
    with pytest.raises(TemplateError) as info:
        render(load(str(tmp_path), 7), {"name": "x"}, None)
    assert info.value.code == "InvalidParameterValue.TemplateDataError"


def test_review_criteria(templates, tmp_path):
    assert all(f.status != "fail" for f in review(load(str(templates), 1001)))
    short = {f.criterion: f.status for f in review(load(str(templates), 1002))}
    assert short["length"] == "fail"
    many = tmp_path / "vars.html"
    many.write_text("<p>" + LONG + " ".join("{{v%d}}" % i for i in range(20)) + "</p>" + '<img src="x">' * 51)
    result = {f.criterion: f.status for f in review(load_file(str(many)))}
    assert result == {"length": "pass", "variables": "fail", "images": "fail", "parts": "warn"}


def test_template_check_cli(templates, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(policy_config(tmp_path, 1, f'template_dir = "{templates}"'))
    ok = subprocess.run([sys.executable, "-m", "gateway", "template", "check", "1001", "-c", str(config)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "PASS  length" in ok.stdout and "passes the SES review criteria" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "gateway", "template", "check", str(templates / "1002.toml"), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["passed"] is False and report["variables"] == ["order"]
    assert any(f["criterion"] == "length" and "at least 160" in f["detail"] for f in report["findings"])


async def test_template_headers_replace_body_and_subject_end_to_end(tmp_path, sink, templates):
    data = json.dumps({"name": "Zoë", "code": "424242"})
    headers = f"X-SES-Template-Id: 1001\r\nX-SES-Template-Data: {data}\r\nContent-Type: text/plain\r\n"
    config = policy_config(tmp_path, sink.port, f'template_dir = "{templates}"')
    async with GatewayHarness(config) as gw:
        _, _, reply = await transaction(gw, ["to@example.net"], body(headers=headers, text="this body is replaced"))
        assert reply.code == 250, reply
        await sink.wait_for(1)
    raw = sink.messages[0].data
    assert b"X-SES-" not in raw and b"this body is replaced" not in raw
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "Your code 424242" and parsed.get_content_type() == "multipart/alternative"
    assert "Hello Zoë, your code is 424242." in parsed.get_body(("plain",)).get_content()
    assert "<b>424242</b>" in parsed.get_body(("html",)).get_content()
    assert Message.parse(raw).count("content-type") == 1


@pytest.mark.parametrize("headers,code", [
    ("X-SES-Template-Id: 9999\r\n", "FailedOperation.InvalidTemplateID"),
    ("X-SES-Template-Id: 1001\r\nX-SES-Template-Data: {oops\r\n", "FailedOperation.WrongContentJson"),
    ('X-SES-Template-Id: 1001\r\nX-SES-Template-Data: {"name": "a", "code": 1}\r\n', "InvalidParameterValue.TemplateDataError"),
    ('X-SES-Template-Id: 1001\r\nX-SES-Template-Data: {"name": "<b>a</b>", "code": "1"}\r\n',
     "InvalidParameterValue.InValidTemplateData"),
    ('X-SES-Template-Id: 1001\r\nX-SES-Template-Data: {"name": "a"}\r\n', "InvalidParameterValue.TemplateDataError"),
])
async def test_template_errors_over_smtp(tmp_path, sink, templates, headers, code):
    async with GatewayHarness(policy_config(tmp_path, sink.port, f'template_dir = "{templates}"')) as gw:
        _, _, reply = await transaction(gw, ["to@example.net"], body(headers=headers))
    assert (reply.code, reply.enhanced) == (554, "5.6.0") and code in reply.text


def test_a_client_subject_only_gets_variable_substitution(templates):
    out = render(load(str(templates), 1002), {"order": "A-7"}, "{% for i in range(9) %}x{% endfor %} {{ order }}")
    assert out.subject == "{% for i in range(9) %}x{% endfor %} A-7"
