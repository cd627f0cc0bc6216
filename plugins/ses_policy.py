"""ses_policy: Tencent Cloud SES semantics at the SMTP edge (DESIGN §4, issue 4).

Every rule answers with its SES error code in the reply text, so an application's log shows
the same code the SES API would have returned:

| rule (default) | stage | reply |
|---|---|---|
| account paused (>= 8 % of today's sends hit the blocklist, >= 300 sends) | MAIL | 451 4.7.1 FailedOperation.HighRejectionRate |
| backlog over ``max_backlog`` queued recipients | MAIL, RCPT | 451 4.7.1 RequestLimitExceeded |
| more than 50 recipients | RCPT | 452 4.5.3 FailedOperation.TooManyRecipients |
| blocklisted address (hard bounce, 14 days, all accounts) | RCPT | 550 5.1.1 FailedOperation.EmailAddrInBlacklist |
| unsubscribed from the sender domain | RCPT | 550 5.7.1 FailedOperation.ReceiverHasUnsubscribed |
| 11th mail to an address within the hour; blocked until 00:00 | RCPT | 450 4.7.1 FailedOperation.FrequencyLimit |
| 300,000 accepted recipients today | RCPT | 451 4.7.1 FailedOperation.ExceedSendLimit |
| bad X-SES-* header / template / data | DATA | 554 5.6.0 <SES code> naming the header |
| subject over 998 characters | DATA | 554 5.6.0 InvalidParameterValue.SubjectLengthError |
| send rate 20/s | delivery | paced: deliveries wait (DeliverStatus 8 "held: send rate") |

Hooks and ordering:
- ``gateway_mail``: paused account and
  backlog checks.
- ``gateway_rcpt``: the checks above, then takes the daily and per-recipient counts atomically.
- ``gateway_data`` (tryfirst): parses the X-SES-* contract into ``transaction.meta`` and strips
  every X-SES-* header, renders templates — first, so other plugins see the meta keys.
- ``gateway_queued``: the counts become final; FromEmailAddress goes into the status records.
- ``gateway_transaction_end``: a transaction that was not queued gives its counts back.
- ``gateway_delivery_gate``: the send-rate pacing, counted in the store (shared by nodes).
- ``gateway_delivery_result``: a 5xx for the recipient blocklists it for every account.
- ``gateway_validate_config``: checks ``[plugins.ses_policy]`` and ``[accounts.*.ses_policy]``.

Config keys: see :mod:`gateway.ses_settings` and the README (SES semantics). The clock is
``gateway.stash[gateway.ses_settings.CLOCK]`` (tests move it).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from gateway import Reply, StashKey, Verdict, hookimpl, ses_headers, ses_limits, ses_settings, ses_templates, suppression
from gateway.delivery import Hold
from gateway.ses_limits import Reservation
from gateway.store.base import StatusUpdate

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.delivery import Delivery
    from gateway.message import Message
    from gateway.server import Gateway
    from gateway.session import Session, Transaction
    from gateway.spool import QueuedMessage
    from gateway.transports.base import AttemptResult

log = structlog.get_logger("gateway.ses_policy")

RESERVED: StashKey[list[Reservation]] = StashKey()       # session.stash: counts of the open transaction


def _settings(gateway: "Gateway", account: str | None) -> ses_settings.PolicySettings | None:
    return ses_settings.for_account(gateway.config, account)


def _now(gateway: "Gateway") -> float:
    return ses_settings.clock_of(gateway.stash)()


def _backlog_full(rule: ses_settings.PolicySettings, queued: int) -> Reply:
    return Reply(Verdict.DENYSOFT, 451, "4.7.1", f"RequestLimitExceeded: {queued} recipients of this account are "
                                                f"queued (max_backlog {rule.max_backlog}); try again later")


async def _refund(gateway: "Gateway", session: "Session") -> None:
    pending = session.stash.get(RESERVED, [])
    if pending:
        session.stash[RESERVED] = []
        await ses_limits.refund(gateway.store, pending)


# -- lifecycle -------------------------------------------------------------------------------------


@hookimpl
def gateway_validate_config(config: "Config") -> list[str] | None:
    return ses_settings.validate(config) or None


# -- MAIL / RCPT ------------------------------------------------------------------------------------


@hookimpl
async def gateway_mail(gateway: "Gateway", session: "Session", transaction: "Transaction", sender: str) -> Reply | None:
    rule = _settings(gateway, session.account)
    if rule is None or session.account is None:
        return None
    paused = await suppression.account_paused(gateway.store, session.account)
    if paused is not None:
        return Reply(Verdict.DENYSOFT, 451, "4.7.1", "FailedOperation.HighRejectionRate: account paused, too many "
                                                     "recipients on the blocklist; the operator must resume it")
    queued = ses_limits.backlog(gateway, session.account)
    if queued >= rule.max_backlog:
        return _backlog_full(rule, queued)
    return None


@hookimpl
async def gateway_rcpt(gateway: "Gateway", session: "Session", transaction: "Transaction", recipient: str) -> Reply | None:
    account = session.account
    rule = _settings(gateway, account)
    if rule is None or account is None:
        return None
    # SendEmail's Destination holds at most 50 (the core's [limits] max_recipients answers the
    # same 452 4.5.3 when it is the lower of the two).
    if len(transaction.recipients) >= rule.max_recipients:
        return Reply(Verdict.DENYSOFT, 452, "4.5.3", f"FailedOperation.TooManyRecipients: at most "
                                                     f"{rule.max_recipients} recipients per message")
    store, glob, now = gateway.store, ses_settings.global_settings(gateway.config), _now(gateway)
    entry = await suppression.blocklist_get(store, recipient)
    if ses_limits.blocklisted(entry, now, glob.blocklist_ttl):
        await ses_limits.count_hit(store, account, rule, glob, now)
        return Reply(Verdict.DENY, 550, "5.1.1", "FailedOperation.EmailAddrInBlacklist: the address hard-bounced "
                                                 "and is on the blocklist")
    sender_domain = transaction.sender.rpartition("@")[2]
    if sender_domain and await suppression.unsubscribed(store, sender_domain, recipient):
        return Reply(Verdict.DENY, 550, "5.7.1", f"FailedOperation.ReceiverHasUnsubscribed: the recipient "
                                                 f"unsubscribed from {sender_domain.lower()}")
    until = await ses_limits.frequency_blocked(store, account, recipient, now)
    if until is not None:
        return _frequency_limit(rule, until, glob.timezone)
    queued = ses_limits.backlog(gateway, account) + len(transaction.recipients)
    if queued >= rule.max_backlog:
        return _backlog_full(rule, queued)
    day = ses_settings.day_of(now, glob.timezone)
    daily = await ses_limits.reserve(store, ses_limits.daily_key(account, day), rule.daily_limit, ses_limits.DAY_TTL)
    if daily is None:
        return Reply(Verdict.DENYSOFT, 451, "4.7.1", f"FailedOperation.ExceedSendLimit: the daily limit of "
                                                     f"{rule.daily_limit} recipients is reached ({day} {glob.timezone})")
    hourly = await ses_limits.reserve(store, ses_limits.recipient_key(account, recipient, now),
                                      rule.recipient_hourly_limit, ses_limits.HOUR + 60)
    if hourly is None:
        await ses_limits.refund(store, [daily])
        until = await ses_limits.block_until_midnight(store, account, recipient, now, glob.timezone)
        log.info("recipient frequency limit", account=account, recipient=recipient, until=int(until))
        return _frequency_limit(rule, until, glob.timezone)
    session.stash.setdefault(RESERVED, []).extend((daily, hourly))
    return None


def _frequency_limit(rule: ses_settings.PolicySettings, until: float, timezone: str) -> Reply:
    return Reply(Verdict.DENYSOFT, 450, "4.7.1", f"FailedOperation.FrequencyLimit: more than "
                                                 f"{rule.recipient_hourly_limit} mails to this address within an hour; "
                                                 f"blocked until 00:00 {timezone} ({int(until)})")


# -- DATA ---------------------------------------------------------------------------------------------


@hookimpl(tryfirst=True)
async def gateway_data(gateway: "Gateway", session: "Session", transaction: "Transaction", message: "Message") -> Reply | None:
    return _data(gateway, session, transaction, message)


def _data(gateway: "Gateway", session: "Session", transaction: "Transaction", message: "Message") -> Reply | None:
    try:
        headers = ses_headers.parse(message)
        if headers.template_id is not None:
            glob = ses_settings.global_settings(gateway.config)
            template = ses_templates.load(glob.template_dir, headers.template_id)
            data = ses_templates.parse_data(headers.template_data)
            rendered = ses_templates.render(template, data, message.get_decoded("subject"))
            ses_templates.apply(message, rendered)
    except (ses_headers.HeaderError, ses_templates.TemplateError) as exc:
        return Reply(Verdict.DENY, 554, "5.6.0", str(exc)[:400])
    rule = _settings(gateway, session.account)
    if rule is not None:
        if rule.require_template and headers.template_id is None:
            return Reply(Verdict.DENY, 554, "5.6.0", "FailedOperation.WithOutPermission: this account sends "
                                                     "with templates only (X-SES-Template-Id)")
        subject = message.get_decoded("subject") or ""
        if len(subject) > rule.max_subject_length:
            return Reply(Verdict.DENY, 554, "5.6.0", f"InvalidParameterValue.SubjectLengthError: the subject has "
                                                     f"{len(subject)} characters, at most {rule.max_subject_length}")
        if len(subject) > rule.subject_warn_length:
            log.warning("long subject", account=session.account, length=len(subject))
    transaction.meta.update(headers.meta())
    ses_headers.strip(message)
    return None


@hookimpl
async def gateway_transaction_end(gateway: "Gateway", session: "Session", transaction: "Transaction", queued: bool) -> None:
    # Counts taken at RCPT stand only for mail that was queued; RSET, a refused DATA, QUIT or a
    # dropped connection give them back.
    if not queued:
        await _refund(gateway, session)


@hookimpl
async def gateway_queued(gateway: "Gateway", session: "Session", transaction: "Transaction", queued: "QueuedMessage") -> None:
    session.stash[RESERVED] = []            # the counts are final
    ses_limits.backlog_changed(gateway)      # the next check rescans
    if queued.account is not None and _settings(gateway, queued.account) is not None:
        await gateway.record([StatusUpdate(queued.message_id, r.recipient, queued.account,
                                           {"FromEmailAddress": queued.sender}) for r in queued.recipients], [])


# -- delivery -------------------------------------------------------------------------------------------


@hookimpl
async def gateway_delivery_gate(gateway: "Gateway", delivery: "Delivery") -> Hold | None:
    rule = _settings(gateway, delivery.account)
    if rule is None or delivery.account is None:
        return None
    now = _now(gateway)
    window_end = await ses_limits.take_send_slot(gateway.store, delivery.account, rule.send_rate, now)
    if window_end is None:
        return None
    # Hold.until is on the scheduler's clock (real time); the window is on the policy clock.
    return Hold(time.time() + max(window_end - now, 0.0) + 0.001, "send rate")


@hookimpl
async def gateway_delivery_result(gateway: "Gateway", delivery: "Delivery", result: "AttemptResult") -> None:
    account = delivery.account
    rule = _settings(gateway, account)
    if rule is None or account is None:
        return
    # A 5xx from the recipient's server for this recipient (RCPT or DATA) is a hard bounce;
    # expiry (code 0, 4.4.7) and 4xx are soft and never blocklist (SES §7.1).
    if result.status != "bounced" or not 500 <= result.code < 600:
        return
    glob = ses_settings.global_settings(gateway.config)
    await suppression.blocklist_add(gateway.store, delivery.recipient, result.describe(), ttl=glob.blocklist_ttl)
    log.info("blocklisted", recipient=delivery.recipient, account=account, reply=result.describe()[:200])
    await ses_limits.count_hit(gateway.store, account, rule, glob, _now(gateway))


def describe(gateway: "Gateway") -> dict[str, Any]:
    """Effective settings per account (for the admin API)."""
    return {name: ses_settings.for_account(gateway.config, name) for name in gateway.config.accounts}
