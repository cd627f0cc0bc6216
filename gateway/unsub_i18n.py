"""Texts of the unsubscribe footer and pages, by X-SES-Unsubscribe language code.

Codes follow Tencent's ``Unsubscribe`` values (ses-semantics.md §1.4): "1" Simplified
Chinese, "2" English, "3" Traditional Chinese, "4" Spanish, "5" French, "6" German,
"7" Japanese, "8" Korean, "9" Arabic, "10" Thai, "11" Indonesian, "12" Vietnamese. Texts are
shipped for 1-7; the other codes fall back to English (:func:`texts`).

Placeholders: ``{domain}`` the sender domain, ``{email}`` the (masked) recipient.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Texts:
    html_lang: str            # BCP 47 tag for <html lang>
    footer: str               # plain-text footer lead; the URL follows on its own line
    footer_link: str          # HTML footer link text
    title: str                # page title
    question: str             # confirmation page
    button: str
    done: str                 # after the POST
    note: str                 # small print under the confirmation


ENGLISH = Texts(
    html_lang="en",
    footer="To stop receiving emails from {domain}, unsubscribe here:",
    footer_link="Unsubscribe",
    title="Unsubscribe",
    question="Stop emails from {domain} to {email}?",
    button="Unsubscribe",
    done="You are unsubscribed. {domain} will no longer send email to {email}.",
    note="One click is enough; you do not need to sign in.",
)

TEXTS: dict[str, Texts] = {
    "2": ENGLISH,
    "1": Texts(
        html_lang="zh-Hans",
        footer="如不想再收到来自 {domain} 的邮件，请点击此处退订：",
        footer_link="退订",
        title="退订",
        question="不再接收 {domain} 发送到 {email} 的邮件？",
        button="退订",
        done="您已成功退订。{domain} 将不再向 {email} 发送邮件。",
        note="只需点击一次，无需登录。",
    ),
    "3": Texts(
        html_lang="zh-Hant",
        footer="如不想再收到來自 {domain} 的郵件，請點擊此處取消訂閱：",
        footer_link="取消訂閱",
        title="取消訂閱",
        question="不再接收 {domain} 寄到 {email} 的郵件？",
        button="取消訂閱",
        done="您已成功取消訂閱。{domain} 將不再寄送郵件至 {email}。",
        note="只需點擊一次，無需登入。",
    ),
    "4": Texts(
        html_lang="es",
        footer="Para dejar de recibir correos de {domain}, date de baja aquí:",
        footer_link="Darse de baja",
        title="Darse de baja",
        question="¿Dejar de recibir correos de {domain} en {email}?",
        button="Darse de baja",
        done="Te has dado de baja. {domain} ya no enviará correos a {email}.",
        note="Basta con un clic; no necesitas iniciar sesión.",
    ),
    "5": Texts(
        html_lang="fr",
        footer="Pour ne plus recevoir d'e-mails de {domain}, désabonnez-vous ici :",
        footer_link="Se désabonner",
        title="Se désabonner",
        question="Ne plus recevoir d'e-mails de {domain} à l'adresse {email} ?",
        button="Se désabonner",
        done="Vous êtes désabonné. {domain} n'enverra plus d'e-mails à {email}.",
        note="Un seul clic suffit ; aucune connexion n'est nécessaire.",
    ),
    "6": Texts(
        html_lang="de",
        footer="Um keine E-Mails mehr von {domain} zu erhalten, melden Sie sich hier ab:",
        footer_link="Abmelden",
        title="Abmelden",
        question="Keine E-Mails mehr von {domain} an {email}?",
        button="Abmelden",
        done="Sie sind abgemeldet. {domain} sendet keine E-Mails mehr an {email}.",
        note="Ein Klick genügt; eine Anmeldung ist nicht nötig.",
    ),
    "7": Texts(
        html_lang="ja",
        footer="{domain} からのメール配信を停止するには、こちらから解除してください：",
        footer_link="配信停止",
        title="配信停止",
        question="{domain} から {email} へのメール配信を停止しますか？",
        button="配信停止",
        done="配信を停止しました。{domain} から {email} へのメールは今後送信されません。",
        note="ワンクリックで完了します。ログインは不要です。",
    ),
}


def texts(code: str | None) -> Texts:
    """The texts for an X-SES-Unsubscribe code; English for unknown or untranslated codes."""
    return TEXTS.get(str(code or "2").strip(), ENGLISH)


def mask_email(address: str) -> str:
    """``alice@example.net`` → ``a***e@example.net``: the page names the address without
    showing it in full to whoever a message was forwarded to."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    if len(local) <= 2:
        return f"{local[:1]}***@{domain}"
    return f"{local[0]}***{local[-1]}@{domain}"
