"""SMTP session and transaction state, with typed stashes for plugin state.

Plugins keep their state in ``session.stash`` / ``transaction.stash`` under module-level
``StashKey[T]()`` keys (pytest's Stash, aiohttp's AppKey) instead of module globals.
The transaction and its stash are reset on RSET and on a new MAIL.
"""
from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    from gateway.config import Listener

T = TypeVar("T")


class StashKey(Generic[T]):
    """A typed key: ``SEEN = StashKey[int]()`` then ``session.stash[SEEN] = 1``."""

    __slots__ = ()


class Stash:
    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], Any] = {}

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._data[key])

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __contains__(self, key: StashKey[Any]) -> bool:
        return key in self._data

    def get(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._data.get(key, default))

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._data.setdefault(key, default))


_ID_PREFIX = secrets.token_hex(3)
_ID_COUNTER = itertools.count(1)


def new_id() -> str:
    """A session id unique across processes and restarts: a random per-process prefix and a
    counter (no urandom call per connection: it showed in profiles)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):06x}"


@dataclass
class Transaction:
    """One MAIL … DATA exchange."""

    id: str
    sender: str                                   # "" for the null reverse-path <>
    smtputf8: bool = False
    body_8bit: bool = False
    recipients: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)   # travels with the message (spooled JSON)
    # A MAIL refusal (530 no AUTH, 550 sender not authorised) kept for RCPT when the gateway
    # has local domains: only recipients there are then accepted (see Intake.mail).
    refusal: Any = None
    stash: Stash = field(default_factory=Stash)


@dataclass
class Session:
    """One SMTP connection."""

    id: str
    peer_ip: str
    peer_port: int
    listener: "Listener"
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    authenticated: bool = False
    username: str | None = None
    account: str | None = None                    # account mail is sent for (AUTH or relay binding)
    allowlisted: bool = False                     # peer is inside the listener's networks
    transaction: Transaction | None = None
    stash: Stash = field(default_factory=Stash)
    messages: int = 0

    @classmethod
    def create(cls, peer_ip: str, peer_port: int, listener: "Listener") -> "Session":
        return cls(id=new_id(), peer_ip=peer_ip, peer_port=peer_port, listener=listener)

    def begin(self, sender: str) -> Transaction:
        self.transaction = Transaction(id=f"{self.id}.{self.messages + 1}", sender=sender)
        return self.transaction

    def reset(self) -> None:
        self.transaction = None

