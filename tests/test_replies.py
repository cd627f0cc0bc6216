"""The reply table's naming rule, code classes, and that no other module writes replies."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import replies
from gateway.replies import SmtpReply, for_verdict
from gateway.results import Reply, Verdict

ROOT = Path(__file__).resolve().parent.parent
TABLE = {name: value for name, value in vars(replies).items() if isinstance(value, SmtpReply)}


def test_names_follow_the_rule():
    assert TABLE
    for name, reply in TABLE.items():
        assert re.fullmatch(r"S\d{3}_[A-Z0-9_]+", name), name
        assert name[1:4] == str(reply.code), name


@pytest.mark.parametrize("name", sorted(TABLE))
def test_enhanced_code_class_matches(name):
    reply = TABLE[name]
    if reply.code == 354:
        return                       # RFC 2034 §3: intermediate replies carry no enhanced code
    assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.enhanced), name
    assert reply.enhanced[0] == str(reply.code)[0], name


def test_no_literal_reply_strings_elsewhere():
    pattern = re.compile(r"""["'][245]\d\d [245]\.\d{1,3}\.\d{1,3}""")
    offenders = []
    for path in list((ROOT / "gateway").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py")):
        if path.name == "replies.py" or "testing" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []


@pytest.mark.parametrize("stage,verdict,code,enhanced", [
    ("rcpt", Verdict.DENY, 550, "5.7.1"), ("rcpt", Verdict.DENYSOFT, 450, "4.7.1"),
    ("mail", Verdict.DENYSOFT, 451, "4.7.1"), ("data", Verdict.DENY, 554, "5.7.1"),
    ("connect", Verdict.DENYDISCONNECT, 554, "5.7.1"), ("rcpt", Verdict.DISCONNECT, 421, "4.7.0"),
])
def test_verdict_mapping(stage, verdict, code, enhanced):
    reply = for_verdict(stage, Reply(verdict))
    assert (reply.code, reply.enhanced) == (code, enhanced)


def test_override_keeps_ses_code_text():
    reply = for_verdict("rcpt", Reply(Verdict.DENY, 550, "5.1.1", "FailedOperation.EmailAddrInBlacklist"))
    assert str(reply) == "550 5.1.1 FailedOperation.EmailAddrInBlacklist"


def test_override_must_match_its_verdict():
    with pytest.raises(ValueError):
        Reply(Verdict.DENYSOFT, 550)
    with pytest.raises(ValueError):
        Reply(Verdict.DENY, 550, "4.7.1")
    with pytest.raises(ValueError):
        Reply(Verdict.DENY, text="two\r\nlines")
