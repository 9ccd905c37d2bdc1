"""The one typed configuration object, built from defaults, a TOML file and CLI flags.

Every setting is declared once in `SETTINGS` (name, parser, default, help); the
TOML keys and the `fastmta serve` flags are both derived from that table, so a
setting cannot exist in one and not the other.  Precedence: flag > file > default.

`Config` is frozen and passed explicitly to whatever needs it; nothing reads
process-global tunables.  A bad value raises `ConfigError`, whose message names
the setting and says what a good value looks like; the CLI prints it on one line
and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["SETTINGS", "Config", "ConfigError", "Setting", "load_config", "parse_hostport"]


class ConfigError(ValueError):
    """A setting has a value fastmta cannot use."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


# --- value parsers: each takes the raw value (TOML value or CLI string) -------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(value: Any) -> int:
    """Bytes from 10485760, "10M", "10MiB", "512k"."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError(f"expected a size like 10485760, 512k or 10M, got {value!r}")
        number = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if number <= 0:
        raise ValueError(f"must be positive, got {value!r}")
    return number


def parse_duration(value: Any) -> float:
    """Seconds from 300, 1.5, "300s", "4h", "5d"; 0 is allowed (means off where it applies)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value).lower())
        if not match or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"expected a duration like 300, 30s, 4h or 5d, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return seconds


def parse_int(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if isinstance(value, bool) or number < minimum:
            raise ValueError(f"must be a whole number >= {minimum}, got {value!r}")
        return number

    return parse


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_hostname(value: Any) -> str:
    name = parse_str(value).rstrip(".")
    if not _HOSTNAME.fullmatch(name):
        raise ValueError(f"expected a host name such as mx.example.org (letters, digits, '-' "
                         f"and '.'; it goes into the greeting, EHLO and Received), got {value!r}")
    return name


def parse_optional_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return parse_str(value)


def parse_path(value: Any) -> Path:
    return Path(parse_str(value)).expanduser()


def parse_optional_path(value: Any) -> Path | None:
    if value is None or value == "":
        return None
    return parse_path(value)


def _items(value: Any) -> list[str]:
    """A list from a TOML array or a comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            items.extend(_items(item) if isinstance(item, str) else [str(item)])
        return items
    raise ValueError(f"expected a list or a comma-separated string, got {value!r}")


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """("127.0.0.1", 2525) from "127.0.0.1:2525"; IPv6 as "[::1]:2525"."""
    text = value.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text)
    if not match:
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {value!r}")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    if port_text is None:
        if default_port is None:
            raise ValueError(f"expected HOST:PORT with a port, got {value!r}")
        port = default_port
    else:
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {value!r}")
    if match.group(1):
        ipaddress.IPv6Address(host)  # raises ValueError with a clear message
    return host, port


def parse_listen(value: Any) -> tuple[str, ...]:
    items = _items(value)
    if not items:
        raise ValueError("needs at least one HOST:PORT")
    for item in items:
        parse_hostport(item)
    return tuple(items)


def parse_optional_hostport(value: Any) -> str | None:
    if value is None or value == "":
        return None
    parse_hostport(str(value))
    return str(value).strip()


def parse_domains(value: Any) -> tuple[str, ...]:
    domains = []
    for item in _items(value):
        domain = item.lower().rstrip(".")
        if not re.fullmatch(r"[a-z0-9*]([a-z0-9.-]*[a-z0-9])?", domain):
            raise ValueError(f"not a domain name: {item!r}")
        domains.append(domain)
    return tuple(domains)


def parse_networks(value: Any) -> tuple[str, ...]:
    networks = []
    for item in _items(value):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"not a network in CIDR form like 192.0.2.0/24: {item!r}") from None
    return tuple(networks)


def parse_names(value: Any) -> tuple[str, ...]:
    return tuple(item.lower() for item in _items(value))


def parse_servers(value: Any) -> tuple[str, ...]:
    """DNS servers: "127.0.0.1", "127.0.0.1:5353", "[::1]:53"."""
    items = tuple(_items(value))
    for item in items:
        parse_hostport(item, default_port=53)
    return items


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def parse_map(value: Any) -> Mapping[str, str]:
    """A TOML table of strings (domain -> transport), or "a=b,c=d" on the command line."""
    if isinstance(value, str):
        pairs = {}
        for item in _items(value):
            key, sep, val = item.partition("=")
            if not sep:
                raise ValueError(f"expected key=value, got {item!r}")
            pairs[key.strip().lower()] = val.strip()
        value = pairs
    if not isinstance(value, Mapping):
        raise ValueError(  # noqa: TRY004 - reported as a config error
            f"expected a table of strings, got {value!r}")
    result = {}
    for key, val in value.items():
        if not isinstance(val, str):
            raise ValueError(f"value for {key!r} must be a string, got {val!r}")  # noqa: TRY004
        result[str(key).lower().rstrip(".")] = val.strip()
    return MappingProxyType(result)


# --- the settings table ---------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    repeatable: bool = False  # a flag given several times accumulates


def _default_hostname() -> str:
    name = socket.getfqdn()
    if not name or name == "localhost.localdomain" or not _HOSTNAME.fullmatch(name):
        return "localhost"  # set `hostname` to the name your MX record points at
    return name


SETTINGS: tuple[Setting, ...] = (
    # receiving
    Setting("listen", parse_listen, ("127.0.0.1:2525",), "address to accept SMTP on, HOST:PORT or [IPv6]:PORT (repeatable)", "HOST:PORT", True),
    Setting("hostname", parse_hostname, None, "our name in the greeting, EHLO and Received (default: this host's FQDN)", "NAME"),
    Setting("spool", parse_path, Path("fastmta-spool"), "spool directory (queue files and, by default, Maildirs)", "DIR"),
    Setting("spool_sync", parse_choice("fsync", "syncfs"), "fsync", "how a message is made durable before its 250: fsync each file, or one syncfs(2) per batch (only for a spool on a file system of its own)", "fsync|syncfs"),
    Setting("spool_commit_threads", parse_int(1), 1, "threads per receive worker that flush new messages to disk; 2 overlaps the flushes of consecutive batches", "N"),
    Setting("spool_reuse_files", parse_int(0), 2048, "delivered messages' spool files kept (up to this many) and reused for new messages, instead of deleting and creating one per message; 0 deletes them", "N"),
    Setting("local_domains", parse_domains, ("localhost",), "domains delivered here, comma-separated", "DOMAINS"),
    Setting("relay_domains", parse_domains, (), "domains accepted from anyone and relayed onwards", "DOMAINS"),
    Setting("relay_networks", parse_networks, ("127.0.0.0/8", "::1/128"), "client networks allowed to relay anywhere (CIDRs)", "CIDRS"),
    Setting("max_message_size", parse_size, 10 * 1024 * 1024, "largest message accepted (SIZE), e.g. 10M", "BYTES"),
    Setting("max_recipients", parse_int(1), 1000, "most recipients per message", "N"),
    Setting("max_errors", parse_int(1), 20, "protocol errors before the session is closed with 421", "N"),
    Setting("max_junk_commands", parse_int(1), 100, "NOOP/RSET/HELP/VRFY/EXPN per session (per message once one is accepted) before each also counts as an error", "N"),
    Setting("max_received_headers", parse_int(1), 50, "Received headers above which a message is refused as a loop", "N"),
    Setting("idle_timeout", parse_duration, 300.0, "seconds a client may stay silent (RFC 5321 4.5.3.2)", "SECONDS"),
    Setting("bare_line_endings", parse_choice("reject", "normalise"), "reject", "bare CR/LF in commands and data: reject or normalise", "reject|normalise"),
    Setting("vrfy", parse_bool, False, "answer VRFY for local addresses (default: 252, no disclosure)", "BOOL"),
    Setting("expn", parse_bool, False, "answer EXPN for local aliases (default: 502)", "BOOL"),
    Setting("greeting_delay", parse_duration, 1.0, "seconds to wait before the 220 to a client outside relay_networks; one that talks first gets 554 and is disconnected (0: off)", "SECONDS"),
    Setting("max_connections", parse_int(1), 2000, "open SMTP sessions per receive worker; more are refused with 421 4.7.0", "N"),
    Setting("max_connections_per_ip", parse_int(0), 50, "open sessions per client IP per worker, relay networks exempt (0: no limit)", "N"),
    Setting("tls_cert", parse_optional_path, None, "PEM certificate chain for STARTTLS", "FILE"),
    Setting("tls_key", parse_optional_path, None, "PEM private key for STARTTLS", "FILE"),
    # processes
    Setting("workers", parse_int(0), len(os.sched_getaffinity(0)) or 1, "receive worker processes (0: serve in the master, for debugging)", "N"),
    Setting("delivery_workers", parse_int(0), 1, "delivery worker processes", "N"),
    Setting("drain_timeout", parse_duration, 30.0, "seconds open sessions may finish after SIGTERM", "SECONDS"),
    Setting("user", parse_optional_str, None, "drop privileges to this user after binding", "USER"),
    Setting("group", parse_optional_str, None, "drop privileges to this group after binding", "GROUP"),
    Setting("pid_file", parse_optional_path, None, "write the master's pid here", "FILE"),
    Setting("metrics", parse_optional_hostport, None, "serve Prometheus metrics on HOST:PORT", "HOST:PORT"),
    # local delivery
    Setting("local_users", parse_names, ("*",), "local parts with a mailbox; * accepts any (unknown users get 550 5.1.1 otherwise)", "NAMES"),
    Setting("aliases_file", parse_optional_path, None, "aliases file: 'name: address, address' per line", "FILE"),
    Setting("catch_all", parse_optional_str, None, "local address that receives mail for unknown local users", "ADDRESS"),
    Setting("maildir_root", parse_optional_path, None, "where Maildirs live (default: SPOOL/mail)", "DIR"),
    # routing and outbound
    Setting("relay_host", parse_optional_str, None, "smarthost for all non-local mail: host, [host] or [host]:port", "HOST"),
    Setting("transport_map", parse_map, MappingProxyType({}), "per-domain transports, e.g. example.com=smtp:[10.0.0.5]:25", "MAP"),
    Setting("dns_nameservers", parse_servers, (), "DNS servers for MX lookups, HOST or HOST:PORT (default: the system's)", "SERVERS"),
    Setting("dns_timeout", parse_duration, 10.0, "seconds for one DNS query", "SECONDS"),
    Setting("outbound_port", parse_int(1), 25, "TCP port of remote SMTP servers", "PORT"),
    Setting("outbound_tls", parse_choice("opportunistic", "none"), "opportunistic", "use STARTTLS outbound when offered", "opportunistic|none"),
    Setting("destination_concurrency", parse_int(1), 20, "parallel connections per destination, in each delivery worker", "N"),
    Setting("connect_timeout", parse_duration, 30.0, "seconds to wait for an outbound TCP connection", "SECONDS"),
    # retries and bounces
    Setting("retry_min_backoff", parse_duration, 300.0, "shortest wait before retrying a deferred message", "SECONDS"),
    Setting("retry_max_backoff", parse_duration, 4000.0, "longest wait between retries", "SECONDS"),
    Setting("max_queue_lifetime", parse_duration, 5 * 86400.0, "give up and bounce after this long, e.g. 5d", "SECONDS"),
    Setting("bounce_queue_lifetime", parse_duration, 5 * 86400.0, "give up on an undeliverable bounce after this long", "SECONDS"),
    Setting("delay_warning", parse_duration, 4 * 3600.0, "warn the sender after this long in the queue (0: never)", "SECONDS"),
    Setting("queue_scan_interval", parse_duration, 1.0, "seconds between scans of the queue when nothing is being delivered (50 ms while mail flows)", "SECONDS"),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Config:
    """Every setting, parsed and validated.  Build it with `load_config`."""

    listen: tuple[str, ...]
    hostname: str
    spool: Path
    spool_sync: str
    spool_commit_threads: int
    spool_reuse_files: int
    local_domains: tuple[str, ...]
    relay_domains: tuple[str, ...]
    relay_networks: tuple[str, ...]
    max_message_size: int
    max_recipients: int
    max_errors: int
    max_junk_commands: int
    max_received_headers: int
    idle_timeout: float
    bare_line_endings: str
    vrfy: bool
    expn: bool
    greeting_delay: float
    max_connections: int
    max_connections_per_ip: int
    tls_cert: Path | None
    tls_key: Path | None
    workers: int
    delivery_workers: int
    drain_timeout: float
    user: str | None
    group: str | None
    pid_file: Path | None
    metrics: str | None
    local_users: tuple[str, ...]
    aliases_file: Path | None
    catch_all: str | None
    maildir_root: Path | None
    relay_host: str | None
    transport_map: Mapping[str, str]
    dns_nameservers: tuple[str, ...]
    dns_timeout: float
    outbound_port: int
    outbound_tls: str
    destination_concurrency: int
    connect_timeout: float
    retry_min_backoff: float
    retry_max_backoff: float
    max_queue_lifetime: float
    bounce_queue_lifetime: float
    delay_warning: float
    queue_scan_interval: float
    config_file: Path | None = field(default=None, compare=False)

    @property
    def mail_root(self) -> Path:
        """Directory holding the local Maildirs."""
        return self.maildir_root if self.maildir_root is not None else self.spool / "mail"

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_hostport(item) for item in self.listen]

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file at `path` (if any), then `overrides` (CLI flags)."""
    raw: dict[str, Any] = {}
    config_file = Path(path) if path is not None else None
    if config_file is not None:
        try:
            with open(config_file, "rb") as handle:
                file_values = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError("config", f"file {str(config_file)!r} does not exist; check the --config path") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{config_file} is not valid TOML: {exc}") from None
        for key, value in file_values.items():
            name = key.replace("-", "_")
            if name not in _BY_NAME:
                raise ConfigError(key, f"unknown setting in {config_file}; see `fastmta serve --help` for the list")
            raw[name] = value
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        name = key.replace("-", "_")
        if name not in _BY_NAME:
            raise ConfigError(key, "unknown setting")
        raw[name] = value
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.name in raw:
            try:
                values[setting.name] = setting.parse(raw[setting.name])
            except (ValueError, TypeError) as exc:
                raise ConfigError(setting.name, str(exc)) from None
        else:
            values[setting.name] = setting.default
    if values["hostname"] is None:
        values["hostname"] = _default_hostname()
    _check_consistency(values)
    return Config(**values, config_file=config_file)


def _check_consistency(values: dict[str, Any]) -> None:
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        raise ConfigError("tls_cert", "tls_cert and tls_key must be given together")
    for name in ("tls_cert", "tls_key", "aliases_file"):
        if values[name] is not None and not values[name].is_file():
            raise ConfigError(name, f"file {str(values[name])!r} does not exist or is not a file")
    if values["retry_max_backoff"] < values["retry_min_backoff"]:
        raise ConfigError("retry_max_backoff", "must not be smaller than retry_min_backoff")
