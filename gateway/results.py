"""Verdicts that plugins return, and how the core turns them into SMTP replies.

Plugins never write SMTP strings (DESIGN §3): they return a :class:`Verdict`, optionally
with a :class:`Reply` carrying an SES error code and text. The core maps verdict × stage
to a reply from :mod:`gateway.replies`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union


class Verdict(enum.Enum):
    CONT = "cont"                        # no opinion: ask the next plugin
    OK = "ok"                            # accept, stop asking
    DENY = "deny"                        # permanent refusal (5xx)
    DENYSOFT = "denysoft"                # temporary refusal (4xx)
    DENYDISCONNECT = "denydisconnect"    # 5xx, then close the connection
    DENYSOFTDISCONNECT = "denysoftdisconnect"  # 4xx, then close
    DISCONNECT = "disconnect"            # 421 and close

    @property
    def decisive(self) -> bool:
        return self is not Verdict.CONT


@dataclass(frozen=True)
class Reply:
    """A verdict with its own reply: ``Reply(Verdict.DENY, 550, "5.7.1", "FailedOperation.X ...")``.

    ``code`` and ``enhanced`` may be left out; the core then takes them from the stage's
    default for the verdict and only the text is replaced.
    """

    verdict: Verdict
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        # An override must agree with its verdict class: a DENYSOFT can't carry a 5xx
        # (RFC 5321 §4.2.1: the first digit is the verdict).
        if self.code is not None:
            soft = self.verdict in (Verdict.DENYSOFT, Verdict.DENYSOFTDISCONNECT)
            hard = self.verdict in (Verdict.DENY, Verdict.DENYDISCONNECT)
            if (soft and self.code // 100 != 4) or (hard and self.code // 100 != 5):
                raise ValueError(f"reply code {self.code} does not match {self.verdict.name}")
            if self.enhanced is not None and self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")
        if self.text is not None and any(c in self.text for c in "\r\n\0"):
            raise ValueError("reply text must be one line")


HookResult = Union[Verdict, Reply, None]


def as_reply(result: object) -> Reply:
    """Normalise what a hook returned into a Reply (``None`` means CONT)."""
    if result is None:
        return Reply(Verdict.CONT)
    if isinstance(result, Reply):
        return result
    if isinstance(result, Verdict):
        return Reply(result)
    raise TypeError(f"hook returned {type(result).__name__}, expected Verdict, Reply or None")
