"""What the scheduler hands a transport, and what a transport hands back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.config import Secret


@dataclass(frozen=True)
class Route:
    """Where one delivery goes.

    ``hosts=None`` means "look up the MX records of ``destination``" (transport ``mx``);
    otherwise the hosts are tried in order (a smarthost). ``tls`` is one of
    ``opportunistic`` (STARTTLS if offered, no certificate check: RFC 7435), ``starttls``
    (required, verified unless ``verify`` is false), ``tls`` (implicit TLS, port 465), ``none``.
    """

    transport: str                     # "smtp" | "tencent-ses"
    destination: str                   # the recipient domain (mx) or "host:port" (smarthost); pool key
    hosts: tuple[str, ...] | None = None
    port: int = 25
    tls: str = "opportunistic"
    verify: bool = True
    username: str | None = None
    password: Secret | None = None


@dataclass(frozen=True)
class AttemptResult:
    """The outcome of one attempt for one recipient."""

    status: str                        # delivered | deferred | bounced
    code: int                          # SMTP reply code (or 0 when no reply: connection errors)
    enhanced: str                      # RFC 3463 code, e.g. "5.1.1"
    text: str                          # the remote reply text or our own explanation
    remote_host: str = ""
    source_address: str = ""

    @classmethod
    def from_reply(cls, code: int, text: str, *, remote_host: str = "", source_address: str = "") -> "AttemptResult":
        """2xx → delivered, 4xx → deferred, 5xx → bounced (RFC 5321 §4.2.1)."""
        text = " ".join(text.split())
        enhanced = ""
        first, _, rest = text.partition(" ")
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(code)[0]:
            enhanced, text = first, rest
        if not enhanced:
            enhanced = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")
        status = "delivered" if 200 <= code < 300 else "bounced" if 500 <= code < 600 else "deferred"
        return cls(status, code, enhanced, text, remote_host, source_address)

    @classmethod
    def deferred(cls, enhanced: str, text: str, *, remote_host: str = "", source_address: str = "") -> "AttemptResult":
        return cls("deferred", 0, enhanced, text, remote_host, source_address)

    @classmethod
    def bounced(cls, enhanced: str, text: str, *, code: int = 550, remote_host: str = "") -> "AttemptResult":
        return cls("bounced", code, enhanced, text, remote_host)

    def describe(self) -> str:
        code = f"{self.code} " if self.code else ""
        host = f" ({self.remote_host})" if self.remote_host else ""
        return f"{code}{self.enhanced} {self.text}{host}".strip()


class Transport(Protocol):
    async def send(self, route: Route, *, source_address: str | None, sender: str, recipient: str,
                   data: bytes, smtputf8: bool, body_8bit: bool) -> AttemptResult: ...

    async def close(self) -> None: ...
