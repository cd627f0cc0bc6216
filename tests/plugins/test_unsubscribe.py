"""Unit tests of the unsubscribe plugin's parts: tokens, header rules, body rewriting,
settings, texts and pages (issue 6). End-to-end behaviour: tests/test_unsubscribe_e2e.py."""
from __future__ import annotations

import base64
import email
import email.message
import email.policy

import pytest

from gateway.config import parse
from gateway.message import Message
from gateway.testing import make_config
from gateway.unsub_body import Changes, apply, rewrite_links
from gateway.unsub_headers import acceptable, keep_existing, parse_uris, set_headers
from gateway.unsub_i18n import ENGLISH, mask_email, texts
from gateway.unsub_pages import confirm_page, done_page
from gateway.unsub_settings import load, resolve_secret
from gateway.unsub_tokens import Claims, TokenCodec, mailto_id, mailto_id_valid

KEY, OLD = b"k" * 32, b"o" * 32
CLAIMS = Claims("u", "Alice@example.net", "example.com", "sesgw-gw-date-20261126-abc", 2_000_000_000, "1")


# -- tokens ---------------------------------------------------------------------------------------


def test_token_round_trip_is_url_safe():
    codec = TokenCodec((KEY,))
    token = codec.encode(CLAIMS)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert codec.decode(token, kind="u", now=1_900_000_000) == CLAIMS
    click = Claims("c", "a@b.example", "example.com", "m", 2_000_000_000, "2", "https://x.example/?q=1&r=é")
    assert codec.decode(codec.encode(click), kind="c", now=0) == click


def test_every_tampered_or_truncated_token_is_refused():
    codec = TokenCodec((KEY,))
    token = codec.encode(CLAIMS)
    for index in range(len(token)):
        for replacement in "AB":
            if token[index] == replacement:
                continue
            forged = token[:index] + replacement + token[index + 1:]
            assert codec.decode(forged, kind="u", now=0) is None, index
    for length in range(len(token)):
        assert codec.decode(token[:length], kind="u", now=0) is None, length
    assert codec.decode(token + "A", kind="u", now=0) is None
    assert codec.decode("x" * 10000, kind="u", now=0) is None


def test_expiry_kind_and_foreign_keys():
    codec = TokenCodec((KEY,))
    token = codec.encode(CLAIMS)
    assert codec.decode(token, kind="u", now=CLAIMS.expires) == CLAIMS
    assert codec.decode(token, kind="u", now=CLAIMS.expires + 1) is None
    assert codec.decode(token, kind="o", now=0) is None                 # an unsubscribe token is no open token
    assert TokenCodec((b"z" * 32,)).decode(token, kind="u", now=0) is None
    # A payload signed with a key we do not have, whatever it claims.
    body = base64.urlsafe_b64encode(b'[1,"u","x@y.example","example.com","m",9999999999,"2"]').rstrip(b"=").decode()
    assert codec.decode(body + ".AAAAAAAAAAAAAAAAAAAAAA", kind="u", now=0) is None


def test_rotation_accepts_the_previous_secret_and_signs_with_the_current():
    old_token = TokenCodec((OLD,)).encode(CLAIMS)
    rotated = TokenCodec((KEY, OLD))
    assert rotated.decode(old_token, kind="u", now=0) == CLAIMS
    assert TokenCodec((OLD,)).decode(rotated.encode(CLAIMS), kind="u", now=0) is None
    assert TokenCodec((KEY,)).decode(old_token, kind="u", now=0) is None     # after the overlap


def test_mailto_id_fits_a_local_part_and_ignores_case():
    ident = mailto_id(KEY, "Example.COM", "Alice@Example.net")
    assert len(ident) == 24 and ident == ident.lower() and len("unsubscribe+" + ident) <= 64
    assert ident == mailto_id(KEY, "example.com", "alice@example.net")
    assert mailto_id_valid((KEY,), ident.upper(), "example.com", "alice@example.net")
    assert mailto_id_valid((OLD, KEY), ident, "example.com", "alice@example.net")
    assert not mailto_id_valid((KEY,), ident, "other.example", "alice@example.net")


# -- List-Unsubscribe rules -------------------------------------------------------------------------


def message_with(*headers: str) -> Message:
    return Message.parse("".join(f"{h}\r\n" for h in ("From: a@example.com", *headers)).encode() + b"\r\nbody\r\n")


@pytest.mark.parametrize("value, ok", [
    ("<https://a.example/u/1>", True),
    ("<https://a.example/u/1>, <mailto:u@a.example?subject=unsubscribe>", True),
    ("<mailto:u@a.example>", True),
    ("<http://a.example/u/1>", False),                    # not https
    ("<javascript:alert(1)>", False),                     # reliability.md row 37
    ("<https://a.example/u/%0D%0ABcc: x@evil.example>", False),
    ("https://a.example/u/1", False),                     # no angle brackets
    ("<https://a.example/u/1>,, <mailto:u@a.example>", False),
])
def test_app_list_unsubscribe_validation(value, ok):
    assert acceptable(message_with(f"List-Unsubscribe: {value}")) is ok


def test_duplicate_fields_are_malformed_and_uris_parse():
    assert not acceptable(message_with("List-Unsubscribe: <https://a.example/1>", "List-Unsubscribe: <https://a.example/2>"))
    assert parse_uris("<https://a.example/1> , <mailto:x@y.example>") == ["https://a.example/1", "mailto:x@y.example"]


def test_kept_header_keeps_post_only_when_valid():
    kept = message_with("List-Unsubscribe: <https://a.example/1>", "List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    assert keep_existing(kept) and kept.get("list-unsubscribe-post") == "List-Unsubscribe=One-Click"
    mailto_only = message_with("List-Unsubscribe: <mailto:x@a.example>", "List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    assert keep_existing(mailto_only) and mailto_only.get("list-unsubscribe-post") is None   # RFC 8058 needs https
    bad = message_with("List-Unsubscribe: <javascript:x>", "List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    assert not keep_existing(bad)
    set_headers(bad, "https://gw.example/u/T", "unsubscribe+abc@gw.example")
    assert bad.get_all("list-unsubscribe") == ["<https://gw.example/u/T>, <mailto:unsubscribe+abc@gw.example?subject=unsubscribe>"]
    assert bad.get_all("list-unsubscribe-post") == ["List-Unsubscribe=One-Click"]


# -- body rewriting --------------------------------------------------------------------------------------


def multipart(html_cte: str = "quoted-printable", html_charset: str = "utf-8") -> Message:
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["To"], msg["Subject"] = "a@example.com", "b@example.net", "hi"
    msg.set_content("plain ü\n")
    msg.add_alternative('<html><BODY><a href="https://x.example/a?b=1&amp;c=2">x</a> <a href=\'http://y.example\'>y</a>'
                        ' <a href="https://gw.example/u/keep">u</a> <a href="#top">t</a></BODY></html>\n',
                        subtype="html", cte=html_cte, charset=html_charset)
    msg.add_attachment(b"\x00\x01" * 100, maintype="application", subtype="octet-stream", filename="a.bin")
    return Message.parse(msg.as_bytes())


def decoded(message: Message) -> dict[str, object]:
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    found = {part.get_content_type(): part.get_content() for part in parsed.walk() if not part.is_multipart()}
    return {k: v.replace("\r\n", "\n") if isinstance(v, str) else v for k, v in found.items()}


CHANGES = Changes(text_footer="退订:\nhttps://gw.example/u/T", html_footer='<p><a href="https://gw.example/u/T">退订</a></p>',
                  pixel_url="https://gw.example/o/P.gif", click=lambda url: "https://gw.example/c/" + url.replace("&", "+"),
                  keep_prefix="https://gw.example/")


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_html_links_pixel_footer_and_text_footer(cte):
    message = multipart(cte)
    headers_before = list(message.fields)
    assert apply(message, CHANGES)
    assert message.fields == headers_before                     # the top-level header fields are untouched
    parts = decoded(message)
    html = str(parts["text/html"])
    assert 'href="https://gw.example/c/https://x.example/a?b=1+c=2"' in html
    assert 'href="https://gw.example/c/http://y.example"' in html
    assert 'href="https://gw.example/u/keep"' in html and 'href="#top"' in html
    assert html.index("退订") < html.index('src="https://gw.example/o/P.gif"') < html.index("</BODY>")
    assert str(parts["text/plain"]).endswith("plain ü\n\n-- \n退订:\nhttps://gw.example/u/T\n")
    assert parts["application/octet-stream"] == b"\x00\x01" * 100
    assert message.as_bytes().isascii()                          # re-encoded 7-bit clean


def test_charset_that_cannot_hold_the_footer_becomes_utf8():
    message = multipart("quoted-printable", "iso-8859-1")
    apply(message, CHANGES)
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    html_part = next(p for p in parsed.walk() if p.get_content_type() == "text/html")
    assert html_part.get_content_charset() == "utf-8" and "退订" in html_part.get_content()


def test_single_part_and_non_mime_messages_get_their_headers_updated():
    plain = Message.parse(b"From: a@example.com\r\nSubject: x\r\n\r\nhello\r\n")
    assert apply(plain, Changes(text_footer="退订 https://gw.example/u/T"))
    assert plain.get("content-transfer-encoding") == "quoted-printable" and plain.get("mime-version") == "1.0"
    assert "charset" in (plain.get("content-type") or "")
    assert decoded(plain)["text/plain"] == "hello\n\n-- \n退订 https://gw.example/u/T\n"
    ascii_only = Message.parse(b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n")
    assert apply(ascii_only, Changes(pixel_url="https://gw.example/o/P.gif"))
    assert ascii_only.get("content-transfer-encoding") == "7bit" and b'<img src="https://gw.example/o/P.gif"' in ascii_only.body


def test_nothing_to_do_and_broken_mime_leave_the_body_alone():
    text_only = Message.parse(b"From: a@example.com\r\n\r\nhttps://x.example\r\n")
    assert not apply(text_only, Changes(pixel_url="https://gw.example/o/P.gif", click=lambda u: u + "!"))
    broken = Message.parse(b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here\r\n")
    before = broken.as_bytes()
    assert not apply(broken, CHANGES) and broken.as_bytes() == before


def test_rewrite_links_only_touches_http_hrefs_of_anchors():
    markup = '<a class="b" HREF="https://x.example">x</a><img src="https://i.example/p.png"><a href="mailto:m@x">m</a>'
    out = rewrite_links(markup, lambda url: "T(" + url + ")")
    assert 'HREF="T(https://x.example)"' in out and 'src="https://i.example/p.png"' in out and "mailto:m@x" in out


# -- settings ---------------------------------------------------------------------------------------------

HTTP = '[http]\naddress = "127.0.0.1:0"\npublic_url = "https://gw.example.com"\n'


def settings_for(tmp_path, plugin: str, *, http: bool = True, accounts: str = ""):
    config = parse(make_config(tmp_path, 1, accounts=accounts, dkim=False,
                               extra=(HTTP if http else "") + "[plugins.unsubscribe]\n" + plugin))
    errors: list[str] = []
    return load(config, errors), errors


def test_settings_defaults_and_account_override(tmp_path):
    settings, errors = settings_for(tmp_path, 'secret = "0123456789abcdef0123"\nclick_tracking = "never"\n',
                                    accounts='[accounts.app.unsubscribe]\nheaders = "always"\nlanguage = "3"\n')
    assert errors == [] and settings is not None
    assert settings.public_url == "https://gw.example.com" and settings.mailto and settings.token_ttl == 60 * 86400
    assert settings.default.headers == "batch" and settings.default.click_tracking == "never"
    app = settings.policy("app")
    assert app.headers == "always" and app.language == "3" and app.click_tracking == "never"   # inherits the global
    assert settings.policy("nobody") == settings.default


@pytest.mark.parametrize("plugin, message", [
    ('secret = "short"\n', "at least 16 characters"),
    ('secret = { env = "NOPE_NOT_SET_X" }\n', "environment variable NOPE_NOT_SET_X is not set"),
    ('secret = "0123456789abcdef0123"\nheaders = "sometimes"\n', "headers: must be one of batch, always, never"),
    ('secret = "0123456789abcdef0123"\nfooter = "yes"\n', "footer: must be one of auto, always, never"),
    ('secret = "0123456789abcdef0123"\nlanguage = "13"\n', "language: must be an X-SES-Unsubscribe code"),
    ('secret = "0123456789abcdef0123"\ntoken_ttl = "1h"\n', "token_ttl: must be at least 2d"),
    ('secret = "0123456789abcdef0123"\nsecrett = "x"\n', "secrett: unknown key"),
    ('previous_secret = "0123456789abcdef0123"\n', "previous_secret: needs secret"),
])
def test_settings_errors_are_one_line_and_name_the_key(tmp_path, plugin, message):
    settings, errors = settings_for(tmp_path, plugin)
    assert settings is None and len(errors) == 1 and message in errors[0] and "plugins.unsubscribe" in errors[0]
    assert "\n" not in errors[0]


def test_settings_need_http_and_inactive_without_secret(tmp_path):
    settings, errors = settings_for(tmp_path, 'secret = "0123456789abcdef0123"\n', http=False)
    assert settings is None and "[http]" in errors[0]
    assert settings_for(tmp_path, 'mailto = false\n') == (None, [])


def test_secret_shapes(tmp_path):
    path = tmp_path / "secret"
    path.write_text("from-a-file-0123456789\n")
    assert resolve_secret({"file": str(path)}) == "from-a-file-0123456789"
    assert resolve_secret({"env": "V"}, {"V": "from-the-environment-1"}) == "from-the-environment-1"
    with pytest.raises(ValueError):
        resolve_secret(42)


# -- texts and pages -------------------------------------------------------------------------------------


def test_languages_and_fallback():
    assert texts("1").html_lang == "zh-Hans" and texts("3").html_lang == "zh-Hant" and texts("2") is ENGLISH
    for code in ("9", "10", "11", "12", None, "junk"):
        assert texts(code) is ENGLISH
    assert mask_email("alice@example.net") == "a***e@example.net" and mask_email("al@x.example") == "a***@x.example"


def test_pages_escape_values():
    page = confirm_page(texts("2"), email="a<b>@example.net", domain="<script>x</script>")
    assert "<script>x" not in page and "&lt;script&gt;" in page and 'method="post"' in page
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert "&lt;script&gt;" in done_page(texts("1"), email="a@b.example", domain="<script>")
