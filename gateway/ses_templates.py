"""SES templates (ses-semantics.md §6): stored by numeric id, ``{{var}}`` placeholders in the
subject, HTML and text parts, rendered with Jinja2's SandboxedEnvironment (HTML autoescaped).

A template is ``<template_dir>/<id>.toml``::

    name = "verification code"
    subject = "Your code is {{code}}"      # optional: else the message's Subject is rendered
    text = "Hello {{name}}, your code is {{code}}."
    html = "<p>Hello {{name}}, your code is <b>{{code}}</b>.</p>"
    # html_file = "1001.html"              # or the parts in files next to it
    # text_file = "1001.txt"

Data follows ``Template.TemplateData``: a JSON object of plain strings (no HTML) that covers
every variable. Errors carry the SES code (§3): ``FailedOperation.InvalidTemplateID``,
``FailedOperation.WrongContentJson``, ``InvalidParameterValue.TemplateDataError``,
``InvalidParameterValue.InValidTemplateData``.
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from gateway.message import CRLF, Message

_HTML_TAG = re.compile(r"<\s*/?\s*[A-Za-z!][^>]*>")
_PLACEHOLDER = re.compile(r"\{\{.*?\}\}", re.S)
_SIMPLE_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_IMG = re.compile(r"<\s*img\b", re.I)
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.I)
MIME_FIELDS = ("content-type", "content-transfer-encoding", "mime-version", "content-disposition", "content-id",
               "content-description")

# Review criteria of the 2021 SES documentation (§6.3), applied by `ses-gateway template check`.
MIN_LENGTH = 160
MAX_VARIABLE_SHARE = 1 / 5
MAX_IMAGES = 50

_TEXT_ENV = SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_HTML_ENV = SandboxedEnvironment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


class TemplateError(Exception):
    """A template or its data cannot be used; ``code`` is the SES error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Template:
    id: int | None
    name: str
    subject: str | None
    text: str | None
    html: str | None
    path: str

    def parts(self) -> dict[str, str]:
        return {k: v for k, v in (("subject", self.subject), ("text", self.text), ("html", self.html)) if v is not None}


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    text: str | None
    html: str | None


_CACHE: dict[str, tuple[float, Template]] = {}


def load(template_dir: str | None, template_id: int) -> Template:
    """Template ``template_id`` from ``template_dir`` (cached until the file changes)."""
    if not template_dir:
        raise TemplateError("FailedOperation.InvalidTemplateID", f"template {template_id}: no template_dir is configured")
    path = os.path.join(template_dir, f"{template_id}.toml")
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        raise TemplateError("FailedOperation.InvalidTemplateID", f"template {template_id} does not exist") from None
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    template = load_file(path, template_id)
    _CACHE[path] = (mtime, template)
    return template


def load_file(path: str, template_id: int | None = None) -> Template:
    """A template from a ``.toml`` file, or a bare ``.html``/``.htm``/``.txt`` body (for checks)."""
    file = Path(path)
    unusable = f"template {template_id if template_id is not None else path}"
    try:
        if file.suffix.lower() in (".html", ".htm"):
            return Template(template_id, file.stem, None, None, file.read_text("utf-8"), path)
        if file.suffix.lower() != ".toml":
            return Template(template_id, file.stem, None, file.read_text("utf-8"), None, path)
        data = tomllib.loads(file.read_text("utf-8"))
        parts: dict[str, str | None] = {}
        for part in ("text", "html"):
            inline, external = data.get(part), data.get(f"{part}_file")
            if external is not None:
                inline = (file.parent / str(external)).read_text("utf-8")
            parts[part] = inline if isinstance(inline, str) else None
        subject = data.get("subject")
        template = Template(template_id, str(data.get("name", file.stem)), subject if isinstance(subject, str) else None,
                            parts["text"], parts["html"], path)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TemplateError("FailedOperation.InvalidTemplateID", f"{unusable} cannot be read: {exc}") from None
    if template.text is None and template.html is None:
        # InvalidParameterValue.TemplateContentIsNULL in SES; at send time the id is unusable.
        raise TemplateError("FailedOperation.InvalidTemplateID", f"{unusable} has neither text nor html")
    for name, source in template.parts().items():
        try:
            _TEXT_ENV.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError("FailedOperation.InvalidTemplateID",
                                f"{unusable}: {name} has a syntax error on line {exc.lineno}: {exc.message}") from None
    return template


def variables(source: str) -> set[str]:
    return set(jinja2.meta.find_undeclared_variables(_TEXT_ENV.parse(source)))


def parse_data(raw: str | None) -> dict[str, str]:
    """``Template.TemplateData``: a JSON object of plain strings without HTML tags."""
    if raw is None or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise TemplateError("FailedOperation.WrongContentJson", "X-SES-Template-Data is not valid JSON") from None
    if not isinstance(data, dict):
        raise TemplateError("InvalidParameterValue.TemplateDataError", "X-SES-Template-Data must be a JSON object")
    for key, value in data.items():
        if not isinstance(value, str):
            raise TemplateError("InvalidParameterValue.TemplateDataError",
                                f"X-SES-Template-Data value of {key!r} must be a string, not {type(value).__name__}")
        if _HTML_TAG.search(value):
            raise TemplateError("InvalidParameterValue.InValidTemplateData",
                                f"X-SES-Template-Data value of {key!r} must not contain HTML tags")
    return data


def render(template: Template, data: dict[str, str], subject: str | None) -> Rendered:
    """Render every part; ``subject`` (the message's) is used when the template has none."""
    # The operator's template parts go through the sandbox; a subject from the submitted
    # message only gets {{var}} substitution (no loops or filters from the client: no CPU bombs).
    sources = {"subject": template.subject, "text": template.text, "html": template.html}
    client_subject = subject if template.subject is None else None
    needed: set[str] = set()
    for source in sources.values():
        if source is not None:
            needed |= variables(source)
    if client_subject is not None:
        needed |= {m.group(1) for m in _SIMPLE_VAR.finditer(client_subject)}
    missing = sorted(needed - set(data))
    if missing:
        raise TemplateError("InvalidParameterValue.TemplateDataError",
                            f"X-SES-Template-Data has no value for {', '.join(missing)}")
    out: dict[str, str | None] = {}
    for part, source in sources.items():
        if source is None:
            out[part] = None
            continue
        env = _HTML_ENV if part == "html" else _TEXT_ENV
        try:
            out[part] = env.from_string(source).render(data)
        except jinja2.TemplateError as exc:         # sandbox violations, undefined attributes
            raise TemplateError("InvalidParameterValue.TemplateDataError",
                                f"template {template.id}: {part} cannot be rendered: {exc}") from None
    if client_subject is not None:
        out["subject"] = _SIMPLE_VAR.sub(lambda m: data[m.group(1)], client_subject)
    if out["subject"] is not None:
        out["subject"] = " ".join(out["subject"].split())   # a subject is one line
    return Rendered(out["subject"], out["text"], out["html"])


def apply(message: Message, rendered: Rendered) -> None:
    """Replace the submitted body (and Subject) with the rendered template: multipart/alternative
    when there are both parts (RFC 2046 §5.1.4: plain first), UTF-8, 7-bit safe encodings."""
    part = EmailMessage(policy=policy.SMTP)
    if rendered.text is not None:
        part.set_content(rendered.text, subtype="plain", charset="utf-8")
        if rendered.html is not None:
            part.add_alternative(rendered.html, subtype="html", charset="utf-8")
    else:
        part.set_content(rendered.html or "", subtype="html", charset="utf-8")
    generated = Message.parse(part.as_bytes())
    message.fields = [f for f in message.fields if f[0] not in MIME_FIELDS]
    message.fields.extend(f for f in generated.fields if f[0] in MIME_FIELDS)
    message.body = generated.body
    if rendered.subject is not None:
        set_subject(message, rendered.subject)


def set_subject(message: Message, subject: str) -> None:
    """Set Subject with RFC 2047 encoding and folding for non-ASCII or long values."""
    raw = policy.SMTP.fold("Subject", subject).encode("ascii")
    if not raw.endswith(CRLF):
        raw += CRLF
    fields, placed = [], False
    for name, value in message.fields:
        if name == "subject":
            if not placed:
                fields.append(("subject", raw))
                placed = True
            continue
        fields.append((name, value))
    if not placed:
        fields.append(("subject", raw))
    message.fields = fields


# -- review ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    criterion: str
    status: str          # pass | fail | warn
    detail: str


def review(template: Template) -> list[Finding]:
    """The SES review criteria (§6.3), each with the numbers behind its verdict."""
    html_text = _HTML_TAG.sub(" ", template.html) if template.html is not None else ""
    body = template.text if template.text is not None else html_text
    placeholders = _PLACEHOLDER.findall(body)
    fixed = " ".join(_PLACEHOLDER.sub(" ", body).split())
    variable_chars = sum(len(p) for p in placeholders)
    images = len(_IMG.findall(template.html or ""))
    findings = [
        Finding("length", "pass" if len(fixed) >= MIN_LENGTH else "fail",
                f"{len(fixed)} characters of fixed text (without variables and markup); "
                f"at least {MIN_LENGTH} are required so the message's meaning is clear without variables"),
        Finding("variables", "pass" if fixed and variable_chars <= len(fixed) * MAX_VARIABLE_SHARE else "fail",
                f"{len(placeholders)} placeholder(s), {variable_chars} characters against {len(fixed)} characters "
                f"of fixed text; variables : text must be at most 1 : 5, and a template of variables only is rejected"),
        Finding("images", "pass" if images <= MAX_IMAGES and (fixed or not images) else "fail",
                f"{images} image(s); at most {MAX_IMAGES}, and an image-only template is rejected"),
    ]
    urls = _URL.findall(body) + _URL.findall(template.html or "")
    if urls:
        findings.append(Finding("links", "warn", f"{len(urls)} URL(s), e.g. {urls[0]}: the current SES review "
                                                 f"rejects templates with URLs or redirect links"))
    if template.text is None or template.html is None:
        findings.append(Finding("parts", "warn", "only one of text and html: SES recommends both"))
    return findings


def template_variables(template: Template) -> list[str]:
    names: set[str] = set()
    for source in template.parts().values():
        names |= variables(source)
    return sorted(names)


def summary(template: Template) -> dict[str, Any]:
    return {"id": template.id, "name": template.name, "path": template.path, "variables": template_variables(template),
            "parts": sorted(p for p in ("text", "html") if getattr(template, p) is not None)}
