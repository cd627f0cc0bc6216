"""The X-SES-* header contract (DESIGN §4, ses-semantics.md §11.4): SMTP headers that carry
the fields of Tencent's ``SendEmail`` request.

| header | SendEmail field | value |
|---|---|---|
| ``X-SES-Template-Id`` | ``Template.TemplateID`` | positive integer |
| ``X-SES-Template-Data`` | ``Template.TemplateData`` | JSON object of plain strings (``b64:`` + base64 accepted) |
| ``X-SES-Trigger-Type`` | ``TriggerType`` | ``0`` batch (default) or ``1`` triggered |
| ``X-SES-Unsubscribe`` | ``Unsubscribe`` | ``"0"`` .. ``"12"`` (link language, §1.4) |
| ``X-SES-Tags`` | — (echoed in events) | ``k=v, k=v`` (AWS ``X-SES-MESSAGE-TAGS`` syntax) |
| ``X-SES-Callback-Custom`` | ``X-Tencentcloudses-Cb-Custom`` | opaque text echoed in callbacks |

Values may be RFC 2047 encoded-words. Every ``X-SES-*`` header (known or not) is removed
before the message is spooled, as AWS SES does, so none is ever delivered or DKIM-signed.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.message import Message

PREFIX = "x-ses-"
KNOWN = ("x-ses-template-id", "x-ses-template-data", "x-ses-trigger-type", "x-ses-unsubscribe",
         "x-ses-tags", "x-ses-callback-custom")
NAMES = {name: "X-SES-" + "-".join(part.capitalize() for part in name[6:].split("-")) for name in KNOWN}

MAX_TEMPLATE_ID = 2**64 - 1                 # TemplateID is a uint64
MAX_TAGS = 50
MAX_CUSTOM = 1000
_TAG = re.compile(r"^\s*([A-Za-z0-9_.-]{1,64})\s*=\s*([A-Za-z0-9_.:@/+-]{0,256})\s*$")


class HeaderError(ValueError):
    """An invalid X-SES-* value: ``code`` is the SES error code, ``header`` the field name."""

    def __init__(self, header: str, code: str, message: str) -> None:
        super().__init__(f"{code}: {NAMES.get(header, header)} {message}")
        self.header = header
        self.code = code


@dataclass
class SesHeaders:
    template_id: int | None = None
    template_data: str | None = None          # the JSON text, decoded from b64: when given so
    trigger_type: int = 0
    unsubscribe: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    callback_custom: str | None = None

    def meta(self) -> dict[str, Any]:
        """The ``transaction.meta`` keys the scheduler, events and other plugins read."""
        meta: dict[str, Any] = {"trigger_type": self.trigger_type}
        if self.template_id is not None:
            meta["template_id"] = self.template_id
        if self.unsubscribe is not None:
            meta["unsubscribe"] = self.unsubscribe
        if self.tags:
            meta["tags"] = dict(self.tags)
        if self.callback_custom is not None:
            meta["callback_custom"] = self.callback_custom
        return meta


def _one(message: Message, name: str) -> str | None:
    if message.count(name) > 1:
        raise HeaderError(name, "InvalidParameterValue", "must appear at most once")
    value = message.get_decoded(name)
    return value.strip() if value is not None else None


def parse(message: Message) -> SesHeaders:
    """Read the contract's headers; raises :class:`HeaderError` naming the first bad one."""
    result = SesHeaders()
    raw = _one(message, "x-ses-template-id")
    if raw is not None:
        if not raw.isdigit() or not 0 < int(raw) <= MAX_TEMPLATE_ID:
            raise HeaderError("x-ses-template-id", "FailedOperation.InvalidTemplateID", "must be a positive integer")
        result.template_id = int(raw)
    data = _one(message, "x-ses-template-data")
    if data is not None:
        if data.startswith("b64:"):
            try:
                data = base64.b64decode(data[4:], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise HeaderError("x-ses-template-data", "FailedOperation.WrongContentJson",
                                  "has a b64: prefix but is not base64 of UTF-8 text") from None
        if result.template_id is None:
            raise HeaderError("x-ses-template-data", "FailedOperation.InvalidTemplateID",
                              "needs X-SES-Template-Id")
        result.template_data = data
    trigger = _one(message, "x-ses-trigger-type")
    if trigger is not None:
        if trigger not in ("0", "1"):
            raise HeaderError("x-ses-trigger-type", "InvalidParameterValue", "must be 0 (batch) or 1 (triggered)")
        result.trigger_type = int(trigger)
    unsubscribe = _one(message, "x-ses-unsubscribe")
    if unsubscribe is not None:
        if unsubscribe not in {str(n) for n in range(13)}:
            raise HeaderError("x-ses-unsubscribe", "InvalidParameterValue", "must be one of \"0\"..\"12\"")
        result.unsubscribe = unsubscribe
    tags = _one(message, "x-ses-tags")
    if tags is not None:
        result.tags = _tags(tags)
    custom = _one(message, "x-ses-callback-custom")
    if custom is not None:
        if len(custom) > MAX_CUSTOM or any(ord(c) < 32 or ord(c) == 127 for c in custom):
            raise HeaderError("x-ses-callback-custom", "InvalidParameterValue",
                              f"must be at most {MAX_CUSTOM} printable characters")
        result.callback_custom = custom
    return result


def _tags(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        match = _TAG.match(item)
        if match is None:
            raise HeaderError("x-ses-tags", "InvalidParameterValue",
                              "must be name=value pairs separated by commas (A-Z a-z 0-9 _ . - in names)")
        tags[match.group(1)] = match.group(2)
    if len(tags) > MAX_TAGS:
        raise HeaderError("x-ses-tags", "InvalidParameterValue", f"must have at most {MAX_TAGS} tags")
    return tags


def strip(message: Message) -> int:
    """Remove every X-SES-* field; returns how many were removed."""
    return message.remove_prefix(PREFIX)
