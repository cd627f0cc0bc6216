"""Strict RFC 5321 mailbox checks for MAIL FROM / RCPT TO arguments.

aiosmtpd's parser (email._header_value_parser) is lenient: it accepts NUL bytes, non-ASCII
without SMTPUTF8, unlimited local parts, and silently strips source routes
(reliability.md §2.5). Every address is re-checked here; the result is either the
normalised address or the reply to send.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr  # aiosmtpd's own parser
from email.errors import HeaderParseError

from gateway import replies
from gateway.replies import SmtpReply

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]+)*$")


@dataclass(frozen=True)
class Parsed:
    address: str          # as the client wrote it (after source-route removal), domain lower-cased
    local: str
    domain: str           # lower-case; A-label form for IDN (RFC 5890) so DNS and rate keys agree
    params: str           # the rest of the command: ESMTP parameters
    source_route: bool


@dataclass(frozen=True)
class Policy:
    smtputf8: bool
    allow_address_literals: bool
    allow_quoted_local_parts: bool


# The common case, ``<dot.atom@ldh.domain> [params]`` in ASCII, skips the (slow) RFC 5322
# parser; anything else — quotes, routes, comments, non-ASCII — takes the full path below.
_SIMPLE = re.compile(r"<([A-Za-z0-9#$&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9#$&'*+/=?^_`{|}~-]+)*)@"
                     r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)>"
                     r"(?:[ \t]+(.*))?")


def parse_path(arg: str, policy: Policy, *, null_ok: bool) -> Parsed | SmtpReply:
    """Parse ``<addr> params`` (the text after ``FROM:``/``TO:``)."""
    arg = arg.strip()
    simple = _SIMPLE.fullmatch(arg)
    if simple is not None:
        local, domain, params = simple.group(1), simple.group(2).lower(), simple.group(3) or ""
        address = f"{local}@{domain}"
        if len(address) > 254:
            return replies.S501_PATH_TOO_LONG
        if len(local) > 64 or len(domain) > 253 or any(label.startswith("xn--") for label in domain.split(".")):
            pass            # length and A-label checks: the full path gives the precise reply
        else:
            return Parsed(address, local, domain, params.strip(), False)
    if any(ord(c) < 32 or ord(c) == 127 for c in arg):
        return replies.S501_BAD_ADDRESS_CHARS
    if not arg.startswith("<"):
        # RFC 5321 §4.1.2 requires angle brackets; bare addresses are a common legacy
        # client habit, so accept them when they parse as a single addr-spec.
        try:
            spec, rest = get_addr_spec(arg)
        except (HeaderParseError, IndexError):
            return replies.S553_BAD_ADDRESS
        raw = spec.addr_spec
        source_route = False
    else:
        if arg.startswith("<>"):
            if not null_ok:
                return replies.S553_BAD_ADDRESS
            return Parsed("", "", "", arg[2:].strip(), False)
        source_route = arg.startswith("<@")
        try:
            angle, rest = get_angle_addr(arg)
        except (HeaderParseError, IndexError):
            return replies.S553_BAD_ADDRESS
        raw = angle.addr_spec
        # The parser eats the whitespace after ">"; parameters must have been separated by it.
        if rest and not arg[len(arg) - len(rest) - 1].isspace():
            return replies.S553_BAD_ADDRESS
    if raw is None or not raw or "<" in raw or ">" in raw:
        return replies.S553_BAD_ADDRESS
    checked = check_mailbox(raw, policy)
    if isinstance(checked, SmtpReply):
        return checked
    local, domain = checked
    return Parsed(f"{local}@{domain}", local, domain, rest.strip(), source_route)


def check_mailbox(address: str, policy: Policy) -> tuple[str, str] | SmtpReply:
    if any(ord(c) < 32 or ord(c) == 127 for c in address):
        return replies.S501_BAD_ADDRESS_CHARS
    if not address.isascii() and not policy.smtputf8:
        return replies.S553_SMTPUTF8_REQUIRED
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return replies.S553_BAD_ADDRESS                # unqualified (bang paths like far!user too)
    if len(address.encode()) > 254:                     # RFC 5321 §4.5.3.1.3: path ≤ 256 incl. <>
        return replies.S501_PATH_TOO_LONG
    if len(local.encode()) > 64:                        # §4.5.3.1.1
        return replies.S553_BAD_ADDRESS
    if local.startswith('"'):
        if not policy.allow_quoted_local_parts:
            return replies.S553_QUOTED_LOCAL
        if not (local.endswith('"') and len(local) >= 2):
            return replies.S553_BAD_ADDRESS
    else:
        if "@" in local:
            return replies.S553_BAD_ADDRESS
        if not _DOT_ATOM.match(local):
            return replies.S553_BAD_ADDRESS
        # Percent hack and bang paths are old relay tricks (reliability.md §2.8, rows 18-19).
        if "%" in local or "!" in local:
            return replies.S553_RELAY_SYNTAX
    if domain.startswith("["):
        if not policy.allow_address_literals:
            return replies.S550_ADDRESS_LITERAL
        literal = domain[1:-1] if domain.endswith("]") else ""
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return replies.S553_BAD_ADDRESS
        return local, domain.lower()
    ascii_domain = to_ascii_domain(domain)
    if ascii_domain is None:
        return replies.S553_BAD_ADDRESS
    return local, ascii_domain


def to_ascii_domain(domain: str) -> str | None:
    """Lower-case A-label form of ``domain``, or None when it is not a valid host name."""
    if domain.endswith(".") or len(domain) > 253:
        return None
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower() if not domain.isascii() else domain.lower()
    except UnicodeError:
        return None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    for label in labels:
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")     # an A-label must decode (RFC 5891 §5.4)
            except UnicodeError:
                return None
    if labels[-1].isdigit():
        return None
    return ascii_domain


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
