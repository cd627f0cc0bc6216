"""One-click unsubscribe and tracking end to end (issue 6): a real gateway, a recording sink,
real HTTP and SMTP clients. Links are taken from the delivered messages."""
from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import aiosmtplib
import pytest
from test_signing import tags, verify_all
from unsub_util import OLD_SECRET, SECRET, free_port, html_mail, list_unsubscribe, parts, submit, text_mail, unsub_config

from gateway import suppression
from gateway_plugins import ses_policy
from gateway.config import parse
from gateway.signing import generate_key, load_keys
from gateway.testing import GatewayHarness
from gateway.unsub_tokens import Claims, TokenCodec

CODEC = TokenCodec((SECRET.encode(),))
RCPT = "to@example.net"


async def events(gw, name: str) -> list:
    items = await gw.gateway.store.outbox(limit=1000)
    return [item.event for item in items if item.event.event == name]


async def status(gw, recipient: str = RCPT) -> dict:
    rows = await gw.gateway.store.query_status(recipient=recipient)
    assert rows, recipient
    return rows[0]


@pytest.fixture
def http_port() -> int:
    return free_port()


async def deliver(gw, sink, data: bytes, count: int = 1, recipients: list[str] | None = None) -> bytes:
    await submit(gw.host, gw.port, data, recipients or [RCPT])
    await sink.wait_for(count)
    return sink.messages[count - 1].data


async def test_headers_are_injected_well_formed_and_signed(tmp_path, sink, http_port):
    config = unsub_config(tmp_path, sink.port, http_port)
    async with GatewayHarness(config) as gw:
        data = await deliver(gw, sink, html_mail())
    https, mailto = list_unsubscribe(data)
    assert https.startswith(f"http://127.0.0.1:{http_port}/u/")
    assert mailto.startswith("unsubscribe+") and mailto.endswith("@gw.example.com") and len(mailto.split("@")[0]) <= 64
    assert data.count(b"\r\nList-Unsubscribe: ") == 1 and b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in data
    claims = CODEC.decode(https.rsplit("/", 1)[1], kind="u", now=time.time())
    assert claims is not None and claims.recipient == RCPT and claims.domain == "example.com"
    assert claims.expires > time.time() + 59 * 86400
    # RFC 8058 §4: the DKIM signature covers (here: oversigns) both fields, and verifies.
    header_list = [h.strip().lower() for h in tags(data)[b"h"].split(b":")]
    assert header_list.count(b"list-unsubscribe") == 2 and header_list.count(b"list-unsubscribe-post") == 2
    signer = load_keys(parse(config))
    zone = {name: {"TXT": [value]} for name, value in signer.public_key_record("example.com")}
    assert await verify_all(data, zone) == [True]


async def test_triggered_mail_gets_nothing_unless_asked(tmp_path, sink, http_port):
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port)) as gw:
        plain = await deliver(gw, sink, html_mail(headers={"X-SES-Trigger-Type": "1"}))
        asked = await deliver(gw, sink, html_mail(headers={"X-SES-Trigger-Type": "1", "X-SES-Unsubscribe": "1"}), 2)
    assert b"List-Unsubscribe" not in plain and b"/o/" not in plain and b"/c/" not in plain
    https, _ = list_unsubscribe(asked)
    body = parts(asked)
    assert "退订" in body["text/plain"] and https in body["text/plain"]
    assert "退订" in body["text/html"] and "/o/" not in body["text/html"]       # no tracking for triggered mail


async def test_get_changes_nothing_post_unsubscribes_and_repeats_are_fine(tmp_path, sink, http_port):
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port)) as gw:
        https, _ = list_unsubscribe(await deliver(gw, sink, html_mail()))
        store = gw.gateway.store
        async with aiohttp.ClientSession() as http:
            for method in ("GET", "HEAD"):                     # link scanners, prefetchers
                async with http.request(method, https) as response:
                    assert response.status == 200
                    assert response.headers["Cache-Control"] == "no-store"
                    page = await response.text()
            async with http.get(https) as response:
                page = await response.text()
            assert 'method="post"' in page and "t***@example.net" in page and "example.com" in page
            assert not await suppression.unsubscribed(store, "example.com", RCPT)
            assert await events(gw, "unsubscribe") == [] and (await status(gw))["UserUnsubscribed"] is False
            # RFC 8058 one-click POST: urlencoded, then multipart, then the page's form.
            async with http.post(https, data="List-Unsubscribe=One-Click",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
                assert response.status == 200 and "unsubscribed" in await response.text()
            form = aiohttp.FormData()
            form.add_field("List-Unsubscribe", "One-Click")
            async with http.post(https, data=form) as response:
                assert response.status == 200
            async with http.post(https, data={"List-Unsubscribe": "One-Click"}, allow_redirects=False) as response:
                assert response.status == 200
        assert await suppression.unsubscribed(store, "example.com", RCPT)
        assert not await suppression.unsubscribed(store, "other.example", RCPT)
        assert (await status(gw))["UserUnsubscribed"] is True
        (event,) = await events(gw, "unsubscribe")
        assert event.email == RCPT and event.account == "app" and event.from_domain == "example.com"
        assert (await suppression.unsubscribe_list(store, "example.com"))[0]["source"] == "one-click"


async def test_forged_truncated_expired_and_wrong_kind_tokens_get_404(tmp_path, sink, http_port):
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port)) as gw:
        https, _ = list_unsubscribe(await deliver(gw, sink, html_mail()))
        base, token = https.rsplit("/", 1)
        body, mac = token.split(".")
        claims = CODEC.decode(token, kind="u", now=time.time())
        assert claims is not None
        flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
        bad = {
            "tampered mac": f"{body}.{flipped}",
            "truncated": token[:-5],
            "no mac": body,
            "garbage": "not-a-token",
            "expired": CODEC.encode(Claims("u", RCPT, "example.com", claims.message_id, int(time.time()) - 1)),
            "other recipient, foreign key": TokenCodec((b"x" * 32,)).encode(Claims("u", "victim@example.net", "example.com",
                                                                                     claims.message_id, 2**31)),
            "open token at /u/": CODEC.encode(Claims("o", RCPT, "example.com", claims.message_id, 2**31)),
        }
        async with aiohttp.ClientSession() as http:
            for name, value in bad.items():
                for method in ("GET", "POST"):
                    async with http.request(method, f"{base}/{value}", data="List-Unsubscribe=One-Click") as response:
                        assert response.status == 404, (name, method)
                        assert await response.text() == "Not Found"
            async with http.get(f"{base.rsplit('/', 1)[0]}/c/{bad['tampered mac']}", allow_redirects=False) as response:
                assert response.status == 404
        assert not await suppression.unsubscribed(gw.gateway.store, "example.com", RCPT)
        assert not await suppression.unsubscribed(gw.gateway.store, "example.com", "victim@example.net")
        assert await events(gw, "unsubscribe") == []


async def test_previous_secret_is_accepted_after_rotation(tmp_path, sink, http_port):
    config = unsub_config(tmp_path, sink.port, http_port).replace(
        f'secret = "{SECRET}"', f'secret = "{SECRET}-new"\nprevious_secret = "{OLD_SECRET}"')
    old = TokenCodec((OLD_SECRET.encode(),)).encode(Claims("u", RCPT, "example.com", "sesgw-x", 2**31))
    async with GatewayHarness(config) as gw:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.http_url}/u/{old}", data="List-Unsubscribe=One-Click") as response:
                assert response.status == 200
        assert await suppression.unsubscribed(gw.gateway.store, "example.com", RCPT)


def two_domains(tmp_path) -> str:
    key = tmp_path / "dkim" / "other.example.s1.pem"
    generate_key(key, "ed25519")
    return (f'[accounts.other]\ndomains = ["other.example"]\n[dkim."other.example"]\nselector = "s1"\nkey_file = "{key}"\n'
            '[[listener]]\naddress = "127.0.0.1:0"\nmode = "relay"\nnetworks = ["127.0.0.0/8"]\naccount = "other"\n')


@pytest.mark.skipif(not hasattr(ses_policy, "gateway_rcpt"),
                    reason="needs the ses_policy plugin (issue 4), which refuses unsubscribed recipients at RCPT")
async def test_next_submission_from_that_domain_is_refused_other_domain_passes(tmp_path, sink, http_port):
    config = unsub_config(tmp_path, sink.port, http_port, extra="[plugins.ses_policy]\n" + two_domains(tmp_path))
    async with GatewayHarness(config) as gw:
        https, _ = list_unsubscribe(await deliver(gw, sink, html_mail()))
        async with aiohttp.ClientSession() as http:
            async with http.post(https, data="List-Unsubscribe=One-Click") as response:
                assert response.status == 200
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await submit(gw.host, gw.port, html_mail(), [RCPT])
        (reply,) = refused.value.recipients
        assert reply.code == 550 and "5.7.1 FailedOperation.ReceiverHasUnsubscribed" in reply.message
        # Another sender domain (another account, another listener) still reaches the recipient.
        host, port = gw.listener(1)
        await submit(host, port, html_mail(sender="hello@other.example"), [RCPT], sender="hello@other.example")
        await sink.wait_for(2)
        assert sink.messages[1].sender == "hello@other.example"


MAILTO_LISTENER = '[[listener]]\naddress = "127.0.0.1:0"\nmode = "relay"\nnetworks = ["127.0.0.0/8"]\n'


async def test_mailto_unsubscribe_through_the_smtp_intake(tmp_path, sink, http_port):
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port, extra=MAILTO_LISTENER)) as gw:
        _, mailto = list_unsubscribe(await deliver(gw, sink, html_mail()))
        host, port = gw.listener(1)                        # a listener bound to no account
        request = f"From: {RCPT}\r\nTo: {mailto}\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n".encode()
        async with aiosmtplib.SMTP(hostname=host, port=port) as client:
            await client.sendmail(RCPT, [mailto], request)
            # An address of the same shape that was never handed out is refused.
            bogus = "unsubscribe+" + "a" * 24 + "@gw.example.com"
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await client.sendmail(RCPT, [bogus], request)
            assert refused.value.recipients[0].code == 550
            # Any other recipient is still no relay for a session without an account.
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
                await client.sendmail(RCPT, ["someone@example.org"], request)
        store = gw.gateway.store
        async with asyncio.timeout(5):
            while not await events(gw, "unsubscribe"):
                await asyncio.sleep(0.02)
        assert await suppression.unsubscribed(store, "example.com", RCPT)
        (event,) = await events(gw, "unsubscribe")
        assert event.email == RCPT and event.account == "app"
        assert (await status(gw))["UserUnsubscribed"] is True
        assert (await suppression.unsubscribe_list(store, "example.com"))[0]["source"] == "mailto"
        # The same address again: accepted, nothing new.
        await submit(host, port, request, [mailto], sender=RCPT)
        await asyncio.sleep(0.2)
        assert len(await events(gw, "unsubscribe")) == 1
    assert len(sink.messages) == 1                        # the unsubscribe mails never left the gateway


async def test_open_pixel_and_click_tracking(tmp_path, sink, http_port):
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port)) as gw:
        data = await deliver(gw, sink, html_mail())
        body = parts(data)
        assert "https://shop.example/deals" in body["text/plain"]           # text parts are left alone
        html = body["text/html"]
        assert 'href="mailto:help@example.com"' in html and "https://shop.example" not in html
        pixel = re.search(r'<img src="([^"]+/o/[^"]+\.gif)"', html).group(1)
        click = re.search(r'<a href="([^"]+/c/[^"]+)">Deals', html).group(1)
        async with aiohttp.ClientSession() as http:
            async with http.head(pixel) as response:                        # HEAD does not count
                assert response.status == 200
            assert await events(gw, "open") == [] and (await status(gw))["UserOpened"] is False
            async with http.get(pixel, headers={"User-Agent": "TestMail/1.0"}) as response:
                assert response.status == 200 and response.content_type == "image/gif"
                assert "no-store" in response.headers["Cache-Control"]
                gif = await response.read()
                assert gif.startswith(b"GIF89a") and gif[6:10] == b"\x01\x00\x01\x00"
            async with http.head(click, allow_redirects=False) as response:
                assert response.status == 302
            assert await events(gw, "click") == []
            async with http.get(click, allow_redirects=False, headers={"User-Agent": "TestMail/1.0"}) as response:
                assert response.status == 302
                assert response.headers["Location"] == "https://shop.example/deals?a=1&b=2"
            # The link is signed into the token: changing it is a forgery, not an open redirect.
            forged = click.replace("/c/", "/c/x")
            async with http.get(forged, allow_redirects=False) as response:
                assert response.status == 404
        record = await status(gw)
        assert record["UserOpened"] is True and record["UserClicked"] is True and record["UserUnsubscribed"] is False
        (opened,) = await events(gw, "open")
        (clicked,) = await events(gw, "click")
        assert opened.useragent == "TestMail/1.0" and opened.account == "app"
        assert clicked.link == "https://shop.example/deals?a=1&b=2" and clicked.email == RCPT


async def test_text_only_mail_is_never_tracked(tmp_path, sink, http_port):
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port, plugin='open_tracking = "always"')) as gw:
        data = await deliver(gw, sink, text_mail())
    assert b"List-Unsubscribe-Post" in data
    assert data.endswith(b"\r\n\r\nJust text, see https://shop.example/x\r\n")


async def test_app_header_kept_when_well_formed_replaced_when_not(tmp_path, sink, http_port):
    good = "<https://app.example/unsub/1>, <mailto:unsub@app.example>"
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port)) as gw:
        kept = await deliver(gw, sink, text_mail(headers={"List-Unsubscribe": good}))
        replaced = await deliver(gw, sink, text_mail(headers={"List-Unsubscribe": "<javascript:alert(1)>",
                                                              "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}), 2)
        http_only = await deliver(gw, sink, text_mail(headers={"List-Unsubscribe": "<http://app.example/u/%0d%0aX: y>"}), 3)
    assert f"List-Unsubscribe: {good}\r\n".encode() in kept and b"List-Unsubscribe-Post" not in kept
    for data in (replaced, http_only):
        assert data.count(b"List-Unsubscribe:") == 1 and data.count(b"List-Unsubscribe-Post:") == 1
        assert list_unsubscribe(data)[0].startswith(f"http://127.0.0.1:{http_port}/u/")


@pytest.mark.parametrize("code, words", [("1", "退订"), ("3", "取消訂閱"), ("2", "Unsubscribe"), ("9", "Unsubscribe"),
                                         ("6", "Abmelden")])
async def test_footer_language_follows_x_ses_unsubscribe(tmp_path, sink, http_port, code, words):
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port)) as gw:
        data = await deliver(gw, sink, html_mail(headers={"X-SES-Unsubscribe": code}))
        https, _ = list_unsubscribe(data)
        async with aiohttp.ClientSession() as http:
            async with http.get(https) as response:
                page = await response.text()
    body = parts(data)
    assert words in body["text/html"] and https in body["text/plain"]
    assert f">{words}</button>" in page


async def test_per_account_override(tmp_path, sink, http_port):
    accounts = '[accounts.app.unsubscribe]\nheaders = "never"\nopen_tracking = "never"\nclick_tracking = "never"\n'
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port, accounts=accounts)) as gw:
        data = await deliver(gw, sink, html_mail())
    assert b"List-Unsubscribe" not in data and b"/o/" not in data and b"/c/" not in data


# A listener whose client is not allowlisted: it has no account and no AUTH.
STRANGER_LISTENER = '[[listener]]\naddress = "127.0.0.1:0"\nmode = "relay"\nnetworks = ["10.0.0.0/8"]\n'


@pytest.mark.parametrize("listener_index", [0, 1], ids=["account-bound-listener", "no-auth-not-allowlisted"])
async def test_mailto_unsubscribe_on_any_listener_without_auth(tmp_path, sink, http_port, listener_index):
    """The recipient's own mail client sends from the recipient's address: not an account's
    domain (listener 0) and not authenticated at all (listener 1). Mail to the unsubscribe
    address is accepted anyway; every other recipient still gets the sender refusal."""
    async with GatewayHarness(unsub_config(tmp_path, sink.port, http_port, extra=STRANGER_LISTENER)) as gw:
        _, mailto = list_unsubscribe(await deliver(gw, sink, html_mail()))
        host, port = gw.listener(listener_index)
        request = f"From: {RCPT}\r\nTo: {mailto}\r\nSubject: unsubscribe\r\n\r\nunsubscribe\r\n".encode()
        async with aiosmtplib.SMTP(hostname=host, port=port) as client:
            errors, reply = await client.sendmail(RCPT, [mailto], request)
            assert errors == {}
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await client.sendmail(RCPT, ["someone@example.org"], request)
            code = refused.value.recipients[0].code
            assert code == (550 if listener_index == 0 else 530)
        async with asyncio.timeout(5):
            while not await events(gw, "unsubscribe"):
                await asyncio.sleep(0.02)
        assert await suppression.unsubscribed(gw.gateway.store, "example.com", RCPT)
    assert len(sink.messages) == 1


async def test_without_local_domains_refusals_stay_at_mail(tmp_path, sink):
    """No mailto feature configured: 530 and NotAuthenticatedSender come at MAIL (catalogue row 39)."""
    from rawsmtp import RawClient

    from gateway.testing import make_config
    config = make_config(tmp_path, sink.port, extra=STRANGER_LISTENER)
    async with GatewayHarness(config) as gw:
        assert gw.gateway.local_domains == set()
        stranger = await RawClient.connect(*gw.listener(1))
        await stranger.ehlo()
        assert (await stranger.cmd(f"MAIL FROM:<{RCPT}>")).code == 530
        await stranger.close()
        bound = await RawClient.connect(*gw.listener(0))
        await bound.ehlo()
        assert (await bound.cmd(f"MAIL FROM:<{RCPT}>")).code == 550
        await bound.close()
