"""Reload semantics in process: running sessions keep their configuration, new sessions get
the new one, plugins hear gateway_reload with the old config, a failed reload changes nothing."""
from __future__ import annotations

import aiosmtplib

from gateway import hookimpl
from gateway.config import load
from gateway.testing import GatewayHarness, make_config


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    @hookimpl
    def gateway_reload(self, gateway, old_config):
        self.calls.append((old_config.limits.max_recipients, gateway.config.limits.max_recipients))


async def rcpt_codes(client: aiosmtplib.SMTP, count: int) -> list[int]:
    await client.mail("app@example.com")
    codes = []
    for i in range(count):
        try:
            codes.append((await client.rcpt(f"r{i}@example.net"))[0])
        except aiosmtplib.SMTPRecipientRefused as exc:
            codes.append(exc.code)
    await client.rset()
    return codes


async def test_running_session_keeps_its_config_new_sessions_get_the_new_one(tmp_path, sink):
    path = tmp_path / "gw.toml"
    text = make_config(tmp_path, sink.port, limits="max_recipients = 5")
    path.write_text(text)
    recorder = Recorder()
    async with GatewayHarness(load(str(path), env={}), plugins=[("recorder", recorder)]) as gw:
        old_session = aiosmtplib.SMTP(hostname=gw.host, port=gw.port)
        await old_session.connect()
        await old_session.ehlo()
        path.write_text(text.replace("max_recipients = 5", "max_recipients = 1"))
        outcome = await gw.gateway.reload()
        assert outcome.ok and recorder.calls == [(5, 1)]
        assert await rcpt_codes(old_session, 2) == [250, 250]            # greeted under the old config
        async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port) as new_session:
            assert await rcpt_codes(new_session, 2) == [250, 452]
        await old_session.quit()

        path.write_text(text.replace("max_recipients = 5", "max_recipients = 0"))
        outcome = await gw.gateway.reload()
        assert not outcome.ok and "max_recipients" in outcome.error
        assert gw.gateway.config.limits.max_recipients == 1 and recorder.calls == [(5, 1)]
        assert "reload FAILED" in gw.gateway.status_text() and gw.gateway.reloads == {"ok": 1, "failed": 1}

        # A listener address change is reported as needing a restart; the socket stays.
        path.write_text(text.replace("127.0.0.1:0", "127.0.0.2:0"))
        outcome = await gw.gateway.reload()
        assert outcome.ok and outcome.restart_needed == ("listener.address",)
        assert gw.gateway.listeners[0].address == "127.0.0.1:0"
