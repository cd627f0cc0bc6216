"""The one reply table: every SMTP reply the gateway sends, with its RFC 3463 code.

Names follow ``S<code>_<REASON>``; ``tests/test_replies.py`` checks the names, that the
enhanced class matches the code class, and that no other module holds a literal reply.
Replies carry the enhanced status code in the text (RFC 2034 §3), except the greeting
and the EHLO lines, which RFC 2034 exempts.
"""
from __future__ import annotations

from dataclasses import dataclass

from gateway.results import Reply, Verdict


@dataclass(frozen=True)
class SmtpReply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    def with_text(self, text: str) -> "SmtpReply":
        return SmtpReply(self.code, self.enhanced, text)

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def closes(self) -> bool:
        return self.code == 421


# --- success -------------------------------------------------------------------------
S221_BYE = SmtpReply(221, "2.0.0", "Bye")
S235_AUTH_OK = SmtpReply(235, "2.7.0", "Authentication successful")
S250_OK = SmtpReply(250, "2.0.0", "OK")
S250_SENDER_OK = SmtpReply(250, "2.1.0", "Sender OK")
S250_RCPT_OK = SmtpReply(250, "2.1.5", "Recipient OK")
S250_QUEUED = SmtpReply(250, "2.0.0", "Ok")          # text gets the MessageId appended
S250_RESET = SmtpReply(250, "2.0.0", "Reset OK")
S252_CANNOT_VRFY = SmtpReply(252, "2.5.0", "Cannot VRFY user, but will accept message")
S214_HELP = SmtpReply(214, "2.0.0", "See RFC 5321")
S220_TLS_READY = SmtpReply(220, "2.0.0", "Ready to start TLS")
S354_DATA = SmtpReply(354, "", "End data with <CR><LF>.<CR><LF>")

# --- temporary ------------------------------------------------------------------------
S421_SHUTTING_DOWN = SmtpReply(421, "4.3.2", "Service shutting down, try again later")
S421_SYSTEM_BUSY = SmtpReply(421, "4.3.2", "System not accepting network messages")
S421_TOO_MANY_CONN_IP = SmtpReply(421, "4.7.0", "Too many connections from your address")
S421_TIMEOUT = SmtpReply(421, "4.4.2", "Timeout exceeded, closing connection")
S421_TOO_MANY_COMMANDS = SmtpReply(421, "4.7.0", "Too many commands, closing connection")
S421_TOO_MANY_UNKNOWN = SmtpReply(421, "4.7.0", "Too many unrecognized commands, closing connection")
S421_DISCONNECT = SmtpReply(421, "4.7.0", "Closing connection")
S450_DENYSOFT_RCPT = SmtpReply(450, "4.7.1", "Recipient temporarily refused")
S451_LOCAL_ERROR = SmtpReply(451, "4.3.0", "Internal error, try again later")
S451_QUEUE_WRITE = SmtpReply(451, "4.3.0", "Queue file write error, try again later")
S451_DENYSOFT = SmtpReply(451, "4.7.1", "Temporarily refused, try again later")
S452_STORAGE = SmtpReply(452, "4.3.1", "Insufficient system storage")
S452_TOO_MANY_RCPTS = SmtpReply(452, "4.5.3", "FailedOperation.TooManyRecipients: too many recipients")
S454_AUTH_LOCKED = SmtpReply(454, "4.7.0", "Temporary authentication failure, try again later")
S454_TLS_UNAVAILABLE = SmtpReply(454, "4.7.0", "TLS not available")

# --- permanent: syntax and sequence ------------------------------------------------------
S500_BAD_SYNTAX = SmtpReply(500, "5.5.2", "Syntax error, command unrecognized")
S500_LINE_TOO_LONG = SmtpReply(500, "5.5.2", "Line too long")
S500_AUTH_LINE_TOO_LONG = SmtpReply(500, "5.5.6", "Authentication exchange line too long")
S500_NON_ASCII_COMMAND = SmtpReply(500, "5.5.2", "Non-ASCII command")
S501_SYNTAX_PARAMS = SmtpReply(501, "5.5.4", "Syntax error in parameters or arguments")
S501_SYNTAX_EHLO = SmtpReply(501, "5.5.4", "Syntax: EHLO hostname")
S501_SYNTAX_HELO = SmtpReply(501, "5.5.4", "Syntax: HELO hostname")
S501_SYNTAX_MAIL = SmtpReply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
S501_SYNTAX_RCPT = SmtpReply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
S501_BAD_ADDRESS_CHARS = SmtpReply(501, "5.5.4", "Invalid characters in address")
S501_PATH_TOO_LONG = SmtpReply(501, "5.1.3", "Path too long")
S501_AUTH_BASE64 = SmtpReply(501, "5.5.2", "Cannot decode response")
S502_NOT_IMPLEMENTED = SmtpReply(502, "5.5.1", "Command not implemented")
S503_BAD_SEQUENCE = SmtpReply(503, "5.5.1", "Bad sequence of commands")
S503_NEED_HELO = SmtpReply(503, "5.5.1", "Send EHLO or HELO first")
S503_NEED_MAIL = SmtpReply(503, "5.5.1", "Bad sequence of commands: need MAIL first")
S503_NEED_RCPT = SmtpReply(503, "5.5.1", "Bad sequence of commands: need RCPT first")
S503_NESTED_MAIL = SmtpReply(503, "5.5.1", "Bad sequence of commands: nested MAIL")
S503_ALREADY_AUTH = SmtpReply(503, "5.5.1", "Already authenticated")
S504_AUTH_MECH = SmtpReply(504, "5.5.4", "Unrecognized authentication type")
S530_AUTH_REQUIRED = SmtpReply(530, "5.7.0", "Authentication required")
S530_STARTTLS_FIRST = SmtpReply(530, "5.7.0", "Must issue a STARTTLS command first")
S535_AUTH_INVALID = SmtpReply(535, "5.7.8", "Authentication credentials invalid")
S538_ENCRYPTION_REQUIRED = SmtpReply(538, "5.7.11", "Encryption required for requested authentication mechanism")
S555_PARAM_UNKNOWN = SmtpReply(555, "5.5.4", "MAIL/RCPT parameters not recognized or not implemented")

# --- permanent: addresses and policy ---------------------------------------------------
S550_DENY = SmtpReply(550, "5.7.1", "Refused by policy")
S550_ADDRESS_LITERAL = SmtpReply(550, "5.7.1", "Address literals are not accepted")
S550_BARE_LF = SmtpReply(550, "5.5.2", "Bare <LF> received")
S550_BARE_CR = SmtpReply(550, "5.5.2", "Bare <CR> received")
S550_FROM_HEADER = SmtpReply(550, "5.6.0", "Message must have exactly one From header")
S553_BAD_ADDRESS = SmtpReply(553, "5.1.3", "Bad address syntax")
S553_RELAY_SYNTAX = SmtpReply(553, "5.1.3", "Source-route, percent-hack and bang-path addresses are not accepted")
S553_QUOTED_LOCAL = SmtpReply(553, "5.1.3", "Quoted local parts are not accepted")
S553_SMTPUTF8_REQUIRED = SmtpReply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
S554_RELAY_DENIED = SmtpReply(554, "5.7.1", "Relay access denied")
S550_NOT_AUTHENTICATED_SENDER = SmtpReply(
    550, "5.7.1", "FailedOperation.NotAuthenticatedSender: the sender domain is not one of this account's signing domains")
S554_ACCESS_DENIED = SmtpReply(554, "5.7.1", "Access denied")

# --- permanent: content ---------------------------------------------------------------
S552_TOO_BIG = SmtpReply(552, "5.3.4", "Message size exceeds fixed maximum message size")
S552_HEADER_TOO_BIG = SmtpReply(552, "5.3.4", "Header too large")
S554_NUL = SmtpReply(554, "5.6.0", "Message contains NUL characters")
S554_BAD_HEADER = SmtpReply(554, "5.6.0", "Malformed header line")
S554_TOO_MANY_HOPS = SmtpReply(554, "5.4.6", "Too many hops, routing loop detected")
S554_CONTENT = SmtpReply(554, "5.6.0", "Message content refused")
S554_DENY_DATA = SmtpReply(554, "5.7.1", "Message refused by policy")

# Verdict × stage → default reply (Haraka's mapping with RFC 3463 codes).
_DEFAULTS: dict[str, dict[Verdict, SmtpReply]] = {
    "connect": {
        Verdict.DENY: S554_ACCESS_DENIED,
        Verdict.DENYDISCONNECT: S554_ACCESS_DENIED,
        Verdict.DENYSOFT: SmtpReply(421, "4.7.0", "Try again later"),
        Verdict.DENYSOFTDISCONNECT: SmtpReply(421, "4.7.0", "Try again later"),
    },
    "mail": {
        Verdict.DENY: SmtpReply(550, "5.7.1", "Sender refused"),
        Verdict.DENYSOFT: SmtpReply(451, "4.7.1", "Sender temporarily refused"),
    },
    "rcpt": {
        Verdict.DENY: SmtpReply(550, "5.7.1", "Recipient refused"),
        Verdict.DENYSOFT: S450_DENYSOFT_RCPT,
    },
    "data": {
        Verdict.DENY: S554_DENY_DATA,
        Verdict.DENYSOFT: SmtpReply(451, "4.7.1", "Message temporarily refused"),
    },
}


def for_verdict(stage: str, reply: Reply) -> SmtpReply:
    """Map a plugin's verdict at ``stage`` to the SMTP reply the client gets."""
    table = _DEFAULTS[stage]
    verdict = reply.verdict
    if verdict is Verdict.DISCONNECT:
        base = S421_DISCONNECT
    elif verdict in table:
        base = table[verdict]
    elif verdict is Verdict.DENYDISCONNECT:
        base = table[Verdict.DENY]
    elif verdict is Verdict.DENYSOFTDISCONNECT:
        base = table[Verdict.DENYSOFT]
    else:
        raise ValueError(f"{verdict.name} has no reply at {stage}")
    code = reply.code or base.code
    enhanced = reply.enhanced or (base.enhanced if str(base.code)[0] == str(code)[0] else f"{str(code)[0]}.0.0")
    return SmtpReply(code, enhanced, reply.text or base.text)
