"""accounts: SMTP AUTH against the ``[accounts.NAME]`` tables.

Hooks: ``gateway_auth`` (trylast, so a plugin checking LDAP or a database can answer first).
The SMTP user name is the account name; the password is compared with ``password`` (a
secret from env or file) or ``password_hash`` (``ses-gateway passwd``), in constant time.
Config: ``[accounts.NAME] password = { env = "VAR" }`` or ``password_hash = "scrypt$..."``.
"""
from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING

from gateway import Verdict, hookimpl
from gateway.passwords import verify_password

if TYPE_CHECKING:
    from gateway.server import Gateway
    from gateway.session import Session


@hookimpl(trylast=True)
async def gateway_auth(gateway: "Gateway", session: "Session", mechanism: str, username: str, password: str) -> str | Verdict:
    account = gateway.config.accounts.get(username)
    if account is None:
        return Verdict.DENY
    if account.password is not None:
        ok = hmac.compare_digest(account.password.value.encode(), password.encode())
    elif account.password_hash is not None:
        # scrypt costs tens of milliseconds by design: keep it off the event loop.
        ok = await asyncio.to_thread(verify_password, password, account.password_hash)
    else:
        ok = False
    return account.name if ok else Verdict.DENY
