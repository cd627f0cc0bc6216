"""Mailbox providers for warm-up budgets: who hosts a recipient domain, and "slow down" replies.

Large providers judge a sending IP by the volume it sends *to them*, so a new IP's daily
budget is split per provider (AWS: "about 1,000 mails a day per mailbox provider per IP"
once warm, ses-semantics.md §9.3; Tencent: "reduce volume to a single recipient domain that
dominates the list", §9.2). A provider is recognised by the recipient domain's MX host names
(Google Workspace and Microsoft 365 customers keep their own domains but use the provider's
MX hosts); when the MX lookup fails, the recipient domain itself is matched as a fallback.

Throttling replies (pause that IP for that provider): 421 or any 4xx with an RFC 3463
``4.7.x`` code, 450/451 with rate words, Microsoft ``4.7.650`` ("temporarily rate limited due
to IP reputation"), Yahoo ``TS01``–``TS04``/``TSS04`` ("temporarily deferred due to unexpected
volume"), NetEase ``HL:IFC``/``HL:ICC``/``RP:QRC`` frequency controls, QQ "frequency limited".
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

OTHER = "other"          # unrecognised domains: counted, limited only by the IP's own caps


@dataclass(frozen=True)
class Provider:
    name: str
    mx: tuple[str, ...]          # glob patterns on MX host names ("*.google.com")
    domains: tuple[str, ...]     # glob patterns on recipient domains (fallback without DNS)
    share: float | None = None   # share of an IP's daily cap; None → the global provider_share

    def matches_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(host, p) for p in self.mx)

    def matches_domain(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(domain, p) for p in self.domains)


BUILTIN_PROVIDERS: tuple[Provider, ...] = (
    # gmail-smtp-in.l.google.com, aspmx.l.google.com, smtp.google.com (Workspace)
    Provider("gmail", ("*.google.com", "google.com", "*.googlemail.com"), ("gmail.com", "googlemail.com")),
    # *.mail.protection.outlook.com (Microsoft 365), hotmail-com.olc.protection.outlook.com
    Provider("microsoft", ("*.outlook.com", "*.hotmail.com", "*.office365.us"),
             ("outlook.com", "hotmail.*", "live.*", "msn.com", "outlook.*")),
    # mta5.am0.yahoodns.net; AOL moved to mx-aol.mail.gm0.yahoodns.net
    Provider("yahoo", ("*.yahoodns.net", "*.yahoo.com", "*.aol.com"), ("yahoo.*", "ymail.com", "rocketmail.com", "aol.com")),
    # mx1.qq.com, mxbiz1.qq.com (Tencent Exmail)
    Provider("qq", ("*.qq.com", "*.exmail.qq.com"), ("qq.com", "foxmail.com", "vip.qq.com")),
    # 163mx01.mxmail.netease.com, 126mx01.mxmail.netease.com, qiye163mx01.mxmail.netease.com
    Provider("netease", ("*.netease.com", "*.163.com", "*.126.com", "*.yeah.net"),
             ("163.com", "126.com", "yeah.net", "vip.163.com", "188.com")),
    # mx01.mail.icloud.com
    Provider("apple", ("*.icloud.com", "*.me.com", "*.mac.com"), ("icloud.com", "me.com", "mac.com")),
)

DEFAULT_THROTTLE_PATTERNS: tuple[str, ...] = (
    r"^421\b",                                             # closing the channel: "try again later"
    r"^4\d\d 4\.7\.\d+",                                   # 4xx policy codes (4.7.0 rate, 4.7.28 unusual rate)
    r"^45[01] .*\b(rate|too many|too fast|throttl\w*|frequency|try again later|limit(ed)?|volume)\b",
    r"\b4\.7\.650\b",                                      # Microsoft: rate limited due to IP reputation
    r"\[?\bTSS?0[1-4]\b\]?",                               # Yahoo: temporarily deferred (TS01–TS04, TSS04)
    r"\b(HL:I[CF]C|HL:REP|RP:QRC|RP:CEL|MI:STC|MI:SFQ)\b",  # NetEase frequency and reputation controls
    r"\bfrequency limited\b",                              # QQ / Tencent Exmail
)


def recognise(providers: tuple[Provider, ...], mx_hosts: list[str] | None, domain: str) -> str:
    """The provider hosting ``domain``: by its MX hosts in preference order, else by the domain."""
    for host in mx_hosts or ():
        for provider in providers:
            if provider.matches_host(host):
                return provider.name
    for provider in providers:
        if provider.matches_domain(domain):
            return provider.name
    return OTHER


def merge_providers(table: object) -> tuple[tuple[Provider, ...], list[str]]:
    """Built-ins overlaid with ``[plugins.warmup.providers.NAME]`` tables; returns (providers, errors).

    A table for a built-in name changes only the keys it gives; a new name adds a provider
    (checked before the built-ins, so a custom pattern can claim hosts first).
    """
    builtins = {p.name: p for p in BUILTIN_PROVIDERS}
    custom: list[Provider] = []
    errors: list[str] = []
    if table is None:
        return BUILTIN_PROVIDERS, errors
    if not isinstance(table, dict):
        return BUILTIN_PROVIDERS, ["providers: must be a table of provider tables"]
    for name, spec in table.items():
        if name == OTHER:
            errors.append(f"providers.{name}: reserved for unrecognised domains")
            continue
        if not isinstance(spec, dict):
            errors.append(f"providers.{name}: must be a table (mx = [...], domains = [...], share = 0.5)")
            continue
        unknown = set(spec) - {"mx", "domains", "share"}
        if unknown:
            errors.append(f"providers.{name}.{sorted(unknown)[0]}: unknown key")
            continue
        base = builtins.get(name, Provider(name, (), ()))
        mx, domains, share = spec.get("mx", list(base.mx)), spec.get("domains", list(base.domains)), spec.get("share", base.share)
        if not (isinstance(mx, list) and all(isinstance(p, str) and p for p in mx)):
            errors.append(f"providers.{name}.mx: must be an array of host patterns such as \"*.google.com\"")
            continue
        if not (isinstance(domains, list) and all(isinstance(p, str) and p for p in domains)):
            errors.append(f"providers.{name}.domains: must be an array of domain patterns")
            continue
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
            errors.append(f"providers.{name}.share: must be a number above 0 and at most 1")
            continue
        provider = Provider(name, tuple(p.lower() for p in mx), tuple(p.lower() for p in domains),
                            float(share) if share is not None else None)
        if name in builtins:
            builtins[name] = provider
        else:
            custom.append(provider)
    return tuple(custom) + tuple(builtins.values()), errors


def compile_patterns(patterns: object) -> tuple[tuple[re.Pattern[str], ...], str | None]:
    """Throttle patterns (case-insensitive regexes on ``"CODE ENHANCED TEXT"``) or an error."""
    if patterns is None:
        patterns = list(DEFAULT_THROTTLE_PATTERNS)
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        return (), "throttle_patterns: must be an array of regular expressions"
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.I))
        except re.error as exc:
            return (), f"throttle_patterns: {pattern!r}: {exc}"
    return tuple(compiled), None


def is_throttling(patterns: tuple[re.Pattern[str], ...], code: int, enhanced: str, text: str) -> bool:
    """Does this reply ask us to slow down? Our own failures (no reply: code 0) never do."""
    if code == 0 or 200 <= code < 300:
        return False
    line = f"{code} {enhanced} {text}"
    return any(p.search(line) for p in patterns)
