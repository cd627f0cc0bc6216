"""Public test harness for ses-gateway and its plugins.

``GatewayHarness`` starts a real gateway in the current event loop on ``127.0.0.1:0``
listeners, with the plugins you give it (entry points are not loaded), and stops it
cleanly. Our own suite and third-party plugin authors use the same tool::

    async with SinkServer() as sink, GatewayHarness(make_config(tmp_path, sink.port)) as gw:
        async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port) as client:
            await client.sendmail("app@example.com", ["to@example.net"], b"From: ...")
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Iterable

from gateway import plugins as plugin_registry
from gateway.config import Config, parse
from gateway.server import Gateway
from gateway.signing import generate_key
from gateway.testing.dns import DnsServer
from gateway.testing.sink import SinkServer

__all__ = ["GatewayHarness", "make_config", "DnsServer", "SinkServer"]


PERMISSIVE_SES_POLICY = ('[plugins.ses_policy]\nsend_rate = "100000/s"\nrecipient_hourly_limit = 1000000\n'
                         'daily_limit = 100000000\nmax_backlog = 10000000\n')


def make_config(tmp_path: Path | str, smarthost_port: int | None = None, *, extra: str = "",
                delivery: str = "", limits: str = "", listener: str = "", server: str = "",
                accounts: str = "", dkim: bool = True) -> str:
    """A minimal config for tests: a relay listener for 127.0.0.0/8 bound to account ``app``
    (domain example.com, with an Ed25519 DKIM key made in ``tmp_path``), SQLite state under
    ``tmp_path``, fast retries, and a smarthost sink."""
    tmp = Path(tmp_path)
    if not any("[plugins.ses_policy]" in part for part in (extra, accounts, delivery, limits, listener, server)):
        # The SES rules are on by default (20/s pacing, 10 mails per recipient per hour);
        # tests of other features send faster than that, so they get limits that never bind.
        # Tests of the rules pass their own [plugins.ses_policy] table.
        extra = PERMISSIVE_SES_POLICY + extra
    if dkim:
        key_file = tmp / "dkim" / "example.com.s1.pem"
        if not key_file.exists():
            generate_key(key_file, "ed25519")
        extra = f'[dkim."example.com"]\nselector = "s1"\nkey_file = "{key_file}"\n' + extra
    if not delivery:
        delivery = textwrap.dedent(f"""\
            transport = "smarthost"
            smarthost = "127.0.0.1:{smarthost_port or 1}"
            smarthost_tls = "none"
            smarthost_insecure = true
            retry_initial = "200ms"
            retry_max = "1s"
            connect_timeout = "2s"
            """)
    return textwrap.dedent("""\
        [server]
        hostname = "gw.example.com"
        spool_dir = "{spool}"
        state = "sqlite:///{state}"
        shutdown_grace = "2s"
        {server}
        [[listener]]
        address = "127.0.0.1:0"
        mode = "relay"
        networks = ["127.0.0.0/8"]
        account = "app"
        {listener}
        [accounts.app]
        domains = ["example.com"]
        {accounts}
        [limits]
        {limits}
        [delivery]
        {delivery}
        {extra}
        """).format(spool=tmp / "spool", state=tmp / "state.db", server=server, listener=listener,
                    accounts=accounts, limits=limits, delivery=delivery, extra=extra)


class GatewayHarness:
    def __init__(self, config: Config | str, *, plugins: Iterable[tuple[str, Any]] = (), env: dict[str, str] | None = None) -> None:
        self.config = parse(config, path="test.toml", env=env or {}) if isinstance(config, str) else config
        self.plugins = list(plugins)
        self.gateway: Gateway | None = None

    async def __aenter__(self) -> "GatewayHarness":
        pm = plugin_registry.create(self.config.plugins_disabled, load_entry_points=False, extra=self.plugins)
        self.gateway = Gateway(self.config, pm)
        try:
            await self.gateway.start()
        except BaseException:
            await self.gateway.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.gateway is not None:
            await self.gateway.stop()

    @property
    def host(self) -> str:
        assert self.gateway is not None
        return str(self.gateway.bound[0][0])

    @property
    def port(self) -> int:
        assert self.gateway is not None
        return int(self.gateway.bound[0][1])

    def listener(self, index: int) -> tuple[str, int]:
        assert self.gateway is not None
        host, port = self.gateway.bound[index]
        return str(host), int(port)

    @property
    def http_url(self) -> str:
        assert self.gateway is not None and self.gateway.http_bound is not None
        host, port = self.gateway.http_bound
        return f"http://{host}:{port}"
