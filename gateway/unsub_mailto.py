"""The mailto half of List-Unsubscribe: ``unsubscribe+ID@<server hostname>``.

A mailbox provider (or a person) that prefers mail sends any message to that address. The
plugin's ``gateway_rcpt`` accepts exactly this local address pattern at the gateway's own
hostname when ID names a live store entry (``Verdict.OK`` passes the core's relay guard for
sessions without an account); its ``gateway_route`` sends such recipients to the internal
transport registered here, whose ``send`` records the unsubscription and reports the
delivery as done. The message is spooled like any other, so the acknowledgement keeps the
spool guarantees (a crash after ``250`` still records it), and nothing leaves the gateway.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gateway.transports.base import AttemptResult, Route
from gateway.unsub_records import lookup_mailto, unsubscribe
from gateway.unsub_settings import Settings, current
from gateway.unsub_tokens import mailto_id_valid

if TYPE_CHECKING:
    from gateway.server import Gateway

TRANSPORT = "unsubscribe"
ROUTE = Route(transport=TRANSPORT, destination=TRANSPORT)
_ADDRESS = re.compile(r"^unsubscribe\+([a-z2-7]{24})@([^@]+)$", re.I)


def address(ident: str, hostname: str) -> str:
    return f"unsubscribe+{ident}@{hostname}"


def match(recipient: str, hostname: str) -> str | None:
    """The ID of an unsubscribe address at ``hostname``, else ``None``."""
    found = _ADDRESS.match(recipient)
    if found is None or found.group(2).lower().rstrip(".") != hostname.lower():
        return None
    return found.group(1).lower()


async def resolve(gateway: "Gateway", settings: Settings, ident: str) -> dict[str, str] | None:
    """The live store entry of ``ident`` whose HMAC checks out, else ``None``."""
    entry = await lookup_mailto(gateway.store, ident)
    if not entry or not all(isinstance(entry.get(k), str) for k in ("r", "d", "m")):
        return None
    if not mailto_id_valid(settings.secrets, ident, entry["d"], entry["r"]):
        return None
    return {k: str(entry[k]) for k in ("r", "d", "m")}


class MailtoTransport:
    """Delivers to unsubscribe addresses by recording the unsubscription."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway

    async def send(self, route: Route, *, source_address: str | None, sender: str, recipient: str,
                   data: bytes, smtputf8: bool, body_8bit: bool) -> AttemptResult:
        settings = current(self.gateway)
        ident = match(recipient, self.gateway.config.hostname)
        entry = await resolve(self.gateway, settings, ident) if settings and ident else None
        if entry is None:
            # Expired between RCPT and delivery: drop quietly, a DSN would be backscatter.
            return AttemptResult("delivered", 250, "2.0.0", "unsubscribe address no longer valid; ignored")
        await unsubscribe(self.gateway, recipient=entry["r"], domain=entry["d"], message_id=entry["m"], source="mailto")
        return AttemptResult("delivered", 250, "2.0.0", "unsubscribed")

    async def close(self) -> None:
        return None
