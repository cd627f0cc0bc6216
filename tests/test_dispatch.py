"""The dispatcher: call order, async impls, timeouts, failure policy, registration rules."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from gateway import Reply, Verdict, hookimpl
from gateway import plugins as registry
from gateway.dispatch import POLICY_FAILURE, Dispatcher, HookFailed
from gateway.plugins import StartupError


def make(*plugins, timeout=1.0):
    # Only the throwaway plugins: the built-ins would answer too.
    builtins = [name for name, _ in registry.BUILTIN_PLUGINS]
    pm = registry.create(builtins, load_entry_points=False,
                         extra=[(type(p).__name__ + str(i), p) for i, p in enumerate(plugins)])
    return Dispatcher(pm, timeout=timeout, gateway="GW")


class Calls:
    def __init__(self):
        self.seen = []


def plugin(name, calls, result=None, *, sleep=0.0, raises=False, tryfirst=False):
    class P:
        @hookimpl(tryfirst=tryfirst)
        async def gateway_rcpt(self, gateway, recipient):
            calls.seen.append((name, gateway, recipient))
            if sleep:
                await asyncio.sleep(sleep)
            if raises:
                raise RuntimeError("boom")
            return result
    P.__name__ = name
    return P()


async def test_first_decisive_verdict_stops_the_chain():
    calls = Calls()
    d = make(plugin("a", calls, Verdict.DENY), plugin("b", calls, None), plugin("c", calls, Verdict.OK, tryfirst=False))
    reply = await d.verdict("gateway_rcpt", session=None, transaction=None, recipient="x@example.net")
    # later-registered first: c says OK, so b and a are never asked
    assert reply.verdict is Verdict.OK
    assert [n for n, _, _ in calls.seen] == ["c"]
    assert calls.seen[0][1] == "GW"           # `gateway` injected for impls that name it


async def test_cont_asks_everyone_and_returns_cont():
    calls = Calls()
    d = make(plugin("a", calls), plugin("b", calls))
    reply = await d.verdict("gateway_rcpt", session=None, transaction=None, recipient="x@example.net")
    assert reply.verdict is Verdict.CONT and len(calls.seen) == 2


async def test_tryfirst_goes_first():
    calls = Calls()
    d = make(plugin("early", calls, tryfirst=True), plugin("late", calls))
    await d.verdict("gateway_rcpt", session=None, transaction=None, recipient="x")
    assert [n for n, _, _ in calls.seen] == ["early", "late"]


@pytest.mark.parametrize("kwargs", [{"raises": True}, {"sleep": 2.0}])
async def test_policy_failure_fails_temporarily(kwargs):
    calls = Calls()
    d = make(plugin("ok", calls, Verdict.OK), plugin("bad", calls, **kwargs), timeout=0.2)
    reply = await d.verdict("gateway_rcpt", session=None, transaction=None, recipient="x")
    assert reply == POLICY_FAILURE
    assert (reply.code, reply.enhanced) == (451, "4.3.0")


async def test_notification_failure_is_skipped():
    seen = []

    class Bad:
        @hookimpl
        def gateway_event(self, event):
            raise RuntimeError("nope")

    class Good:
        @hookimpl(trylast=True)
        def gateway_event(self, event):
            seen.append(event)

    d = make(Good(), Bad())
    await d.notify("gateway_event", event="E")
    assert seen == ["E"]


async def test_first_raises_hookfailed():
    class Bad:
        @hookimpl
        def gateway_route(self, delivery):
            raise RuntimeError("x")

    d = make(Bad())
    with pytest.raises(HookFailed) as info:
        await d.first("gateway_route", delivery=None)
    assert info.value.hook == "gateway_route"


async def test_reply_passes_through():
    class P:
        @hookimpl
        def gateway_rcpt(self):
            return Reply(Verdict.DENY, 550, "5.1.1", "FailedOperation.EmailAddrInBlacklist")

    reply = await make(P()).verdict("gateway_rcpt", session=None, transaction=None, recipient="x")
    assert reply.text == "FailedOperation.EmailAddrInBlacklist"


def test_misspelled_hook_stops_startup():
    class Typo:
        @hookimpl
        def gateway_rcp(self, recipient):
            return None

    with pytest.raises(StartupError, match="gateway_rcp"):
        registry.create(load_entry_points=False, extra=[("typo", Typo())])


def test_unknown_argument_stops_startup():
    class BadArgs:
        @hookimpl
        def gateway_rcpt(self, recipient, colour):
            return None

    with pytest.raises(Exception):
        registry.create(load_entry_points=False, extra=[("badargs", BadArgs())])


def test_builtins_can_be_disabled_by_name():
    pm = registry.create(["routing"], load_entry_points=False)
    assert pm.get_plugin("routing") is None and pm.get_plugin("accounts") is not None
    with pytest.raises(StartupError, match="unknown plugin"):
        registry.create(["no-such-plugin"])


def test_plugins_command_lists_hooks_in_call_order():
    result = subprocess.run([sys.executable, "-m", "gateway", "plugins"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "accounts (builtin)" in result.stdout and "routing (builtin)" in result.stdout
    route_line = next(line for line in result.stdout.splitlines() if "gateway_route  [call order:" in line)
    assert route_line.rstrip().endswith("routing]")      # the trylast default is asked last
