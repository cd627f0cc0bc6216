"""The HTML pages behind the unsubscribe link: confirmation (GET) and done (POST).

Small, self-contained documents: inline CSS, no scripts, no external resources (the
Content-Security-Policy set by :mod:`gateway.unsub_http` forbids them), right-to-left not
needed for the shipped languages. Every value is HTML-escaped.
"""
from __future__ import annotations

import html

from gateway.unsub_i18n import Texts, mask_email

_STYLE = """
*{box-sizing:border-box}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
  background:#f4f5f7;color:#1f2328;font:16px/1.5 system-ui,-apple-system,"Segoe UI",
  "PingFang SC","Hiragino Sans","Noto Sans CJK SC","Microsoft YaHei",sans-serif}
main{background:#fff;max-width:28rem;width:calc(100% - 2rem);padding:2rem;border-radius:12px;
  box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(0,0,0,.06)}
h1{font-size:1.25rem;margin:0 0 1rem}
p{margin:0 0 1.25rem}
button{font:inherit;font-weight:600;color:#fff;background:#c62828;border:0;border-radius:8px;
  padding:.7rem 1.4rem;cursor:pointer}
button:hover,button:focus{background:#a31f1f}
.note{color:#59636e;font-size:.875rem;margin:1.25rem 0 0}
.done{color:#1a7f37}
"""


def _document(texts: Texts, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="{texts.html_lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="robots" content="noindex,nofollow">'
            f"<title>{html.escape(texts.title)}</title><style>{_STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def confirm_page(texts: Texts, *, email: str, domain: str) -> str:
    """GET: asks, changes nothing. The form POSTs the RFC 8058 body to the same URL."""
    question = html.escape(texts.question.format(domain=domain, email=mask_email(email)))
    return _document(texts, (
        f"<h1>{html.escape(texts.title)}</h1><p id=\"question\">{question}</p>"
        '<form method="post" action="">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        f'<button type="submit" id="unsubscribe">{html.escape(texts.button)}</button></form>'
        f'<p class="note">{html.escape(texts.note)}</p>'))


def done_page(texts: Texts, *, email: str, domain: str) -> str:
    done = html.escape(texts.done.format(domain=domain, email=mask_email(email)))
    return _document(texts, f'<h1>{html.escape(texts.title)}</h1><p class="done" id="done">{done}</p>')
