"""Configuration: one TOML file read with tomlkit into frozen, typed objects.

Every unknown key, wrong type or impossible value raises :class:`ConfigError` with one line
naming the file, line (when it can be found) and key; the CLI turns it into exit status 78
(EX_CONFIG, so systemd's ``RestartPreventExitStatus=78`` stops a restart loop).
The fixed keys of DESIGN §7 are kept exactly; everything else is documented in
``config/gateway.toml``.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar

import tomlkit
import tomlkit.exceptions

from gateway.units import parse_duration, parse_rate, parse_size

T = TypeVar("T")

EX_CONFIG = 78


class ConfigError(Exception):
    """A configuration problem, always one line."""


@dataclass(frozen=True)
class Secret:
    """A secret value; ``repr`` and ``str`` never show it (no secret in logs or errors)."""

    value: str = field(repr=False)
    source: str = "inline"

    def __str__(self) -> str:
        return f"<secret from {self.source}>"


@dataclass(frozen=True)
class Listener:
    address: str
    host: str
    port: int
    mode: str                       # relay | submission | smtps
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    account: str | None
    tls_cert: str | None
    tls_key: str | None
    bare_lf: str                    # normalize | reject
    require_auth: bool              # AUTH needed for clients outside `networks`

    def allows(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


@dataclass(frozen=True)
class Account:
    name: str
    domains: tuple[str, ...]
    password: Secret | None
    password_hash: str | None
    callback_url: str | None
    settings: Mapping[str, Any]     # extra per-account keys, read by plugins (validated there)

    def owns(self, domain: str) -> bool:
        return domain.lower() in self.domains


@dataclass(frozen=True)
class Limits:
    max_message_size: int
    max_recipients: int
    max_connections: int
    max_connections_per_ip: int
    idle_timeout: float
    data_timeout: float
    tls_handshake_timeout: float
    command_line_length: int
    text_line_length: int
    max_header_size: int
    max_received_headers: int
    max_unknown_commands: int
    max_junk_commands: int
    max_mail_commands: int
    auth_max_failures: int
    auth_failure_window: float
    auth_lockout: float
    min_free_space: int
    allow_address_literals: bool
    allow_quoted_local_parts: bool


@dataclass(frozen=True)
class Delivery:
    transport: str                  # mx | smarthost | tencent-ses
    smarthost: str | None
    smarthost_host: str | None
    smarthost_port: int
    smarthost_tls: str              # starttls | tls | none
    smarthost_insecure: bool
    smarthost_username: str | None
    smarthost_password: Secret | None
    max_lifetime: float
    retry_initial: float
    retry_max: float
    retry_jitter: float
    connect_timeout: float
    command_timeout: float
    data_timeout: float
    concurrency_per_destination: int
    max_connections: int
    connection_idle: float
    messages_per_connection: int
    mx_port: int
    mx_tls: str                     # opportunistic | none
    allow_local_mx: bool
    dns_nameservers: tuple[tuple[str, int], ...]
    dns_timeout: float
    source_address: str | None
    egress_ips: tuple[str, ...]     # public addresses mail leaves from (SPF records, `domain verify`)


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    key_file: str
    algorithm: str                  # rsa-sha256 | ed25519-sha256 (detected from the key)
    generate: bool = False          # create the key at start when the file is missing


@dataclass(frozen=True)
class Http:
    address: str
    host: str
    port: int
    public_url: str
    admin_token: Secret | None


@dataclass(frozen=True)
class Config:
    path: str
    hostname: str
    spool_dir: str
    state: str
    node_id: str
    log_level: str
    log_format: str
    shutdown_grace: float
    workers: int                    # worker processes sharing the listeners (SO_REUSEPORT)
    listeners: tuple[Listener, ...]
    accounts: Mapping[str, Account]
    limits: Limits
    delivery: Delivery
    dkim: Mapping[str, tuple[DkimKey, ...]]
    http: Http | None
    plugins_disabled: tuple[str, ...]
    plugin_settings: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def plugin_config(self, name: str) -> Mapping[str, Any]:
        """The ``[plugins.<name>]`` table (empty when absent), for plugins to read."""
        return self.plugin_settings.get(name, MappingProxyType({}))

    def account_for_domain(self, domain: str) -> Account | None:
        for account in self.accounts.values():
            if account.owns(domain):
                return account
        return None


# --------------------------------------------------------------------------------------
# Reading


class _Table:
    """One TOML table being read; remembers which keys were used so leftovers are errors."""

    def __init__(self, reader: "_Reader", data: Mapping[str, Any], path: str) -> None:
        self.reader = reader
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return self.reader.error(self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, kind: type[T] | tuple[type, ...], default: Any = ..., *, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required or default is ...:
                raise self.error(name, "is required")
            return default
        value = _plain(self.data[name])
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"expected {_kind_names(kinds)}, got a boolean")
        if int in kinds and float not in kinds and isinstance(value, float):
            raise self.error(name, f"expected {_kind_names(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(name, f"expected {_kind_names(kinds)}, got {type(value).__name__} {value!r}")
        return value

    def convert(self, name: str, parse: Callable[[object], T], default: Any = ...) -> T:
        self.used.add(name)
        if name not in self.data:
            if default is ...:
                raise self.error(name, "is required")
            return parse(default) if isinstance(default, str) else default  # type: ignore[no-any-return,unused-ignore]
        try:
            return parse(_plain(self.data[name]))
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def positive(self, name: str, default: int, *, minimum: int = 1) -> int:
        value = self.get(name, int, default)
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return int(value)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    def table(self, name: str, *, required: bool = False) -> "_Table":
        self.used.add(name)
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(name, "table is required")
            value = {}
        if not isinstance(value, Mapping):
            raise self.error(name, "must be a table")
        return _Table(self.reader, value, self.key(name))

    def secret(self, name: str) -> Secret | None:
        self.used.add(name)
        if name not in self.data:
            return None
        return self.reader.secret(self.key(name), _plain(self.data[name]))

    def done(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise self.error(name, "unknown key")


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "an array", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _plain(value: Any) -> Any:
    """tomlkit items → plain Python values (tomlkit's own types subclass the builtins)."""
    if hasattr(value, "unwrap"):
        return value.unwrap()
    return value


class _Reader:
    def __init__(self, path: str, text: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.env = env

    def line_of(self, dotted: str) -> int | None:
        """Best effort: the line of the last key of ``dotted`` (tomlkit keeps no positions)."""
        parts = [p for p in re.split(r"[.\[\]]", dotted) if p and not p.isdigit()]
        if not parts:
            return None
        last = parts[-1].strip('"')
        pattern = re.compile(rf'^\s*"?{re.escape(last)}"?\s*=')
        header = None
        if len(parts) > 1:
            header = parts[-2].strip('"')
        seen_header = header is None
        for number, line in enumerate(self.lines, 1):
            if header and line.lstrip().startswith("[") and header in line:
                seen_header = True
            if seen_header and pattern.match(line):
                return number
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line) or (line.lstrip().startswith("[") and last in line):
                return number
        return None

    def error(self, dotted: str, message: str) -> ConfigError:
        line = self.line_of(dotted)
        where = f"{self.path}:{line}" if line else self.path
        return ConfigError(f"{where}: {dotted}: {message}")

    def secret(self, dotted: str, value: Any) -> Secret:
        try:
            return secret_value(value, self.env)
        except ValueError as exc:
            raise self.error(dotted, str(exc)) from None


def secret_value(value: Any, env: Mapping[str, str] | None = None) -> Secret:
    """A secret in any of the config's shapes: ``"x"``, ``{ env = "VAR" }``, ``{ file = "/path" }``.
    Raises ValueError with a one-line reason that never contains the secret."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        return Secret(value)
    if isinstance(value, Mapping) and set(value) == {"env"}:
        name = value["env"]
        if not isinstance(name, str) or name not in env:
            raise ValueError(f"environment variable {name} is not set")
        return Secret(env[name], f"env {name}")
    if isinstance(value, Mapping) and set(value) == {"file"}:
        filename = value["file"]
        try:
            text = Path(str(filename)).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {filename}: {exc.strerror}") from None
        return Secret(text, f"file {filename}")
    raise ValueError('expected a string, { env = "VAR" } or { file = "/path" }')


def parse_secret(config: "Config", dotted: str, value: Any, env: Mapping[str, str] | None = None) -> Secret:
    """For plugins: a secret from their config table, or a one-line ConfigError naming the key."""
    try:
        return secret_value(value, env)
    except ValueError as exc:
        raise ConfigError(f"{config.path}: {dotted}: {exc}") from None


def parse_hostport(value: object, *, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:2525"``, ``"[::1]:25"``, ``"mail.example.com"`` (with a default port)."""
    text = str(value).strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]\s]+)(?::(\d+))?", text)
    if not match:
        raise ValueError(f"expected host:port, got {value!r}")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"expected host:port, got {value!r}")
        port = default_port
    else:
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


def _is_public(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host not in ("localhost",)
    return not (addr.is_loopback or addr.is_private or addr.is_link_local)


def _listener(reader: _Reader, table: _Table, index: int) -> Listener:
    address = table.get("address", str, required=True)
    try:
        host, port = parse_hostport(address)
    except ValueError as exc:
        raise table.error("address", str(exc)) from None
    mode = table.choice("mode", ("relay", "submission", "smtps"), "relay")
    networks_raw = table.get("networks", list, [])
    networks = []
    for item in networks_raw:
        try:
            net = ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise table.error("networks", f"{item!r} is not a network") from None
        # An allowlist of everything is an open relay (reliability.md §4.2, row 57).
        if net.prefixlen == 0 or (net.version == 4 and net.prefixlen < 8) or (net.version == 6 and net.prefixlen < 16):
            raise table.error("networks", f"{net} would make this listener an open relay")
        networks.append(net)
    account = table.get("account", str, None)
    tls_cert = table.get("tls_cert", str, None)
    tls_key = table.get("tls_key", str, None)
    if (tls_cert is None) != (tls_key is None):
        raise table.error("tls_cert" if tls_cert is None else "tls_key", "tls_cert and tls_key go together")
    for name, filename in (("tls_cert", tls_cert), ("tls_key", tls_key)):
        if filename and not os.access(filename, os.R_OK):
            raise table.error(name, f"cannot read {filename}")
    bare_lf = table.choice("bare_lf", ("normalize", "reject"), "normalize" if mode == "relay" else "reject")
    if mode == "relay":
        if not networks:
            raise table.error("networks", "a relay listener needs an allowlist of networks (it would be an open relay)")
        require_auth = tls_cert is not None
    else:
        if tls_cert is None:
            raise table.error("tls_cert", f"a {mode} listener needs tls_cert and tls_key (AUTH only over TLS)")
        require_auth = True
    table.done()
    return Listener(address, host, port, mode, tuple(networks), account, tls_cert, tls_key, bare_lf, require_auth)


def _account(reader: _Reader, table: _Table, name: str) -> Account:
    domains = table.get("domains", list, [])
    clean = []
    for domain in domains:
        if not isinstance(domain, str) or not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z0-9-]+", domain):
            raise table.error("domains", f"{domain!r} is not a domain name")
        clean.append(domain.lower())
    password = table.secret("password")
    password_hash = table.get("password_hash", str, None)
    if password and password_hash:
        raise table.error("password_hash", "set password or password_hash, not both")
    if password_hash is not None and not password_hash.startswith("scrypt$"):
        raise table.error("password_hash", "expected a hash made by `ses-gateway passwd`")
    callback_url = table.get("callback_url", str, None)
    if callback_url is not None and not re.match(r"^https?://[^\s/]+", callback_url):
        raise table.error("callback_url", f"expected an http(s) URL, got {callback_url!r}")
    settings = {k: _plain(v) for k, v in table.data.items() if k not in table.used}
    # Beyond the fixed keys, an account holds one sub-table per plugin
    # (``[accounts.app.ses_policy]``), validated by that plugin's gateway_validate_config;
    # the gateway checks at start that each sub-table names a loaded plugin.
    for key, value in settings.items():
        if not isinstance(value, dict):
            raise table.error(key, "unknown key")
    table.used.update(settings)
    return Account(name, tuple(clean), password, password_hash, callback_url, MappingProxyType(settings))


def _limits(table: _Table) -> Limits:
    max_size = table.convert("max_message_size", parse_size, "25MB")
    limits = Limits(
        max_message_size=max_size,
        max_recipients=table.positive("max_recipients", 50),
        max_connections=table.positive("max_connections", 500),
        max_connections_per_ip=table.positive("max_connections_per_ip", 50),
        idle_timeout=table.convert("idle_timeout", parse_duration, "5m"),
        data_timeout=table.convert("data_timeout", parse_duration, "10m"),
        tls_handshake_timeout=table.convert("tls_handshake_timeout", parse_duration, "30s"),
        command_line_length=table.positive("command_line_length", 512, minimum=512),
        text_line_length=table.positive("text_line_length", 998, minimum=998),
        max_header_size=table.convert("max_header_size", parse_size, "256KB"),
        max_received_headers=table.positive("max_received_headers", 50),
        max_unknown_commands=table.positive("max_unknown_commands", 5),
        max_junk_commands=table.positive("max_junk_commands", 100),
        max_mail_commands=table.positive("max_mail_commands", 10000),
        auth_max_failures=table.positive("auth_max_failures", 5),
        auth_failure_window=table.convert("auth_failure_window", parse_duration, "10m"),
        auth_lockout=table.convert("auth_lockout", parse_duration, "15m"),
        min_free_space=table.convert("min_free_space", parse_size, int(max_size * 1.5)),
        allow_address_literals=table.get("allow_address_literals", bool, False),
        allow_quoted_local_parts=table.get("allow_quoted_local_parts", bool, False),
    )
    for name in ("idle_timeout", "data_timeout", "tls_handshake_timeout"):
        if getattr(limits, name) <= 0:
            raise table.error(name, "must be greater than zero")
    table.done()
    return limits


def _delivery(table: _Table) -> Delivery:
    transport = table.choice("transport", ("mx", "smarthost", "tencent-ses"), "mx")
    smarthost = table.get("smarthost", str, None)
    host, port = None, 25
    if smarthost is not None:
        try:
            host, port = parse_hostport(smarthost, default_port=25)
        except ValueError as exc:
            raise table.error("smarthost", str(exc)) from None
    elif transport == "smarthost":
        raise table.error("smarthost", 'is required when transport = "smarthost"')
    tls = table.choice("smarthost_tls", ("starttls", "tls", "none"), "starttls")
    insecure = table.get("smarthost_insecure", bool, False)
    username = table.get("smarthost_username", str, None)
    password = table.secret("smarthost_password")
    if tls == "none" and not insecure and transport == "smarthost":
        raise table.error("smarthost_tls", '"none" sends mail in clear text: also set smarthost_insecure = true')
    if username and tls == "none":
        raise table.error("smarthost_username", "AUTH credentials are never sent without TLS")
    if (username is None) != (password is None):
        raise table.error("smarthost_password" if password is None else "smarthost_username",
                          "smarthost_username and smarthost_password go together")
    nameservers = []
    for item in table.get("dns_nameservers", list, []):
        try:
            nameservers.append(parse_hostport(item, default_port=53))
        except ValueError as exc:
            raise table.error("dns_nameservers", str(exc)) from None
    jitter = table.get("retry_jitter", (int, float), 0.2)
    if not 0 <= jitter < 1:
        raise table.error("retry_jitter", "must be between 0 and 1")
    delivery = Delivery(
        transport=transport, smarthost=smarthost, smarthost_host=host, smarthost_port=port,
        smarthost_tls=tls, smarthost_insecure=insecure, smarthost_username=username,
        smarthost_password=password,
        max_lifetime=table.convert("max_lifetime", parse_duration, "72h"),
        retry_initial=table.convert("retry_initial", parse_duration, "5m"),
        retry_max=table.convert("retry_max", parse_duration, "4h"),
        retry_jitter=float(jitter),
        connect_timeout=table.convert("connect_timeout", parse_duration, "30s"),
        command_timeout=table.convert("command_timeout", parse_duration, "5m"),
        data_timeout=table.convert("data_timeout", parse_duration, "10m"),
        concurrency_per_destination=table.positive("concurrency_per_destination", 20),
        max_connections=table.positive("max_connections", 200),
        connection_idle=table.convert("connection_idle", parse_duration, "50s"),
        messages_per_connection=table.positive("messages_per_connection", 100),
        mx_port=table.positive("mx_port", 25),
        mx_tls=table.choice("mx_tls", ("opportunistic", "none"), "opportunistic"),
        allow_local_mx=table.get("allow_local_mx", bool, False),
        dns_nameservers=tuple(nameservers),
        dns_timeout=table.convert("dns_timeout", parse_duration, "10s"),
        source_address=table.get("source_address", str, None),
        egress_ips=tuple(_ips(table, "egress_ips")),
    )
    if delivery.retry_initial <= 0:
        raise table.error("retry_initial", "must be greater than zero")
    if delivery.retry_max < delivery.retry_initial:
        raise table.error("retry_max", "must not be smaller than retry_initial")
    table.done()
    return delivery


def _ips(table: _Table, name: str) -> list[str]:
    result = []
    for item in table.get(name, list, []):
        try:
            result.append(str(ipaddress.ip_address(str(item))))
        except ValueError:
            raise table.error(name, f"{item!r} is not an IP address") from None
    return result


def _dkim(reader: _Reader, table: _Table) -> dict[str, tuple[DkimKey, ...]]:
    result: dict[str, tuple[DkimKey, ...]] = {}
    for domain in list(table.data):
        sub = table.table(domain)
        keys = [_dkim_key(sub, domain.lower(), "")]
        # A second key, for dual signing (RSA + Ed25519) or rotation (a second selector).
        if sub.has("selector2") or sub.has("key_file2"):
            keys.append(_dkim_key(sub, domain.lower(), "2"))
        sub.done()
        result[domain.lower()] = tuple(keys)
    return result


def _dkim_key(table: _Table, domain: str, suffix: str) -> DkimKey:
    selector = table.get("selector" + suffix, str, required=True)
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", selector):
        raise table.error("selector" + suffix, f"{selector!r} is not a valid selector")
    key_file = table.get("key_file" + suffix, str, required=True)
    generate = table.get("generate", bool, False) if not suffix else False
    return DkimKey(domain, selector, key_file, "", generate)


def _http(table: _Table) -> Http:
    address = table.get("address", str, required=True)
    try:
        host, port = parse_hostport(address)
    except ValueError as exc:
        raise table.error("address", str(exc)) from None
    public_url = table.get("public_url", str, f"http://{address}")
    if not re.match(r"^https?://[^\s/]+", public_url):
        raise table.error("public_url", f"expected an http(s) URL, got {public_url!r}")
    token = table.secret("admin_token")
    table.done()
    return Http(address, host, port, public_url.rstrip("/"), token)


def load(path: str, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``. Raises :class:`ConfigError` (one line) on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse(text, path=path, env=os.environ if env is None else env)


def parse(text: str, *, path: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}:{exc.line}: TOML syntax error: {str(exc).split(' at line')[0]}") from None
    reader = _Reader(path, text, os.environ if env is None else env)
    root = _Table(reader, document, "")

    server = root.table("server", required=True)
    hostname = server.get("hostname", str, required=True)
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", hostname):
        raise server.error("hostname", f"{hostname!r} is not a host name")
    spool_dir = server.get("spool_dir", str, required=True)
    state = server.get("state", str, required=True)
    if not re.match(r"^(sqlite:///.+|redis://.+|rediss://.+)$", state):
        raise server.error("state", f'expected "sqlite:///PATH" or "redis://HOST:PORT/DB", got {state!r}')
    if not state.startswith("sqlite:///"):
        # The Redis backend (several nodes, one set of limits) is the scale-out issue's work.
        raise server.error("state", "the Redis backend is not available in this version; use sqlite:///PATH")
    node_id = server.get("node_id", str, hostname.split(".")[0])
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", node_id):
        raise server.error("node_id", "use 1-32 letters, digits, - or _")
    log_level = server.choice("log_level", ("debug", "info", "warning", "error"), "info")
    log_format = server.choice("log_format", ("auto", "json", "console"), "auto")
    shutdown_grace = server.convert("shutdown_grace", parse_duration, "30s")
    workers = server.positive("workers", 1)
    if workers > 64:
        raise server.error("workers", "must be at most 64")
    server.done()

    listeners_raw = _plain(document.get("listener", []))
    root.used.add("listener")
    if not isinstance(listeners_raw, list) or not listeners_raw:
        raise reader.error("listener", "at least one [[listener]] is required")
    listeners = tuple(_listener(reader, _Table(reader, item, f"listener[{i}]"), i) for i, item in enumerate(listeners_raw))
    seen_addresses = set()
    for item in listeners:
        if item.address in seen_addresses and item.port != 0:      # port 0: the OS picks one each
            raise reader.error("listener.address", f"{item.address} is used by two listeners")
        seen_addresses.add(item.address)

    accounts_table = root.table("accounts")
    accounts = {name: _account(reader, accounts_table.table(name), name) for name in list(accounts_table.data)}
    owners: dict[str, str] = {}
    for account in accounts.values():
        for domain in account.domains:
            if domain in owners:
                raise reader.error(f"accounts.{account.name}.domains", f"{domain} already belongs to account {owners[domain]}")
            owners[domain] = account.name
    for item in listeners:
        if item.account is not None and item.account not in accounts:
            raise reader.error("listener.account", f"no [accounts.{item.account}] for listener {item.address}")

    limits = _limits(root.table("limits"))
    delivery = _delivery(root.table("delivery"))
    dkim = _dkim(reader, root.table("dkim"))
    http = _http(root.table("http")) if root.has("http") else None
    root.used.add("http")

    plugins = root.table("plugins")
    disabled = plugins.get("disabled", list, [])
    if not all(isinstance(x, str) for x in disabled):
        raise plugins.error("disabled", "expected an array of plugin names")
    plugin_settings: dict[str, Mapping[str, Any]] = {}
    for name in list(plugins.data):
        if name == "disabled":
            continue
        value = _plain(plugins.data[name])
        if not isinstance(value, dict):
            raise plugins.error(name, "must be a table")
        plugin_settings[name] = MappingProxyType(value)
        plugins.used.add(name)
    plugins.done()
    root.done()

    return Config(
        path=path, hostname=hostname, spool_dir=spool_dir, state=state, node_id=node_id,
        log_level=log_level, log_format=log_format, shutdown_grace=shutdown_grace, workers=workers,
        listeners=listeners, accounts=MappingProxyType(accounts), limits=limits, delivery=delivery,
        dkim=MappingProxyType(dkim), http=http, plugins_disabled=tuple(disabled),
        plugin_settings=MappingProxyType(plugin_settings), raw=_plain(document),
    )
