"""routing: the default route and source address, from ``[delivery]``.

Hooks: ``gateway_route`` and ``gateway_source_address``, both trylast so that any plugin
(warm-up, per-domain routing) answers first. ``transport = "smarthost"`` sends everything to
``smarthost`` with ``smarthost_tls``; ``transport = "mx"`` looks up each recipient domain's
MX hosts (opportunistic STARTTLS, RFC 7435).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import hookimpl
from gateway.transports.base import Route

if TYPE_CHECKING:
    from gateway.delivery import Delivery
    from gateway.server import Gateway


@hookimpl(trylast=True)
def gateway_route(gateway: "Gateway", delivery: "Delivery") -> Route:
    config = gateway.config.delivery
    if config.transport == "smarthost":
        assert config.smarthost_host is not None
        return Route(transport="smtp", destination=f"{config.smarthost_host}:{config.smarthost_port}",
                     hosts=(config.smarthost_host,), port=config.smarthost_port, tls=config.smarthost_tls,
                     verify=not config.smarthost_insecure, username=config.smarthost_username,
                     password=config.smarthost_password)
    if config.transport == "tencent-ses":
        return Route(transport="tencent-ses", destination="tencent-ses")
    return Route(transport="smtp", destination=delivery.domain, hosts=None, port=config.mx_port,
                 tls="opportunistic" if config.mx_tls == "opportunistic" else "none", verify=False)


@hookimpl(trylast=True)
def gateway_source_address(gateway: "Gateway", delivery: "Delivery", route: Route) -> str | None:
    return gateway.config.delivery.source_address
