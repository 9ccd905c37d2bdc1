"""The next hop for each recipient domain: local delivery, a transport map entry, the relay host, or MX.

First match wins:
1. `local_domains` (exact names; "*.example.com" for its subdomains) -> local delivery;
2. `transport_map`: the domain itself, then ".parent" keys from the nearest parent up, then "*";
3. `relay_host` (smarthost) for all other mail;
4. an address literal, "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3) -> that address;
5. the MX records of the domain (`resolver.MXResolver`, RFC 5321 5.1).

Transport map values (`parse_transport`): `smtp:[host]` / `smtp:[host]:port` (the host's addresses,
no MX lookup), `smtp:host` / `smtp:host:port` (the MX of host), `smtp` (the MX of the recipient's own
domain, bypassing relay_host), `lmtp:host:port` / `lmtp:[host]:port` (addresses only; the port is
required and is never 25, RFC 2033), `local`, `discard[:reason]`, `error:[5.X.Y ]text` (bounce) and
`retry:[4.X.Y ]text` (defer).  `relay_host`: `host`, `host:port`, `[host]`, `[host]:port`; brackets
mean no MX lookup, as in Postfix.  `RoutingTable.from_config` (or `check_routing_config`) validates
all of it and raises ConfigError naming the setting: call it when the config is loaded.

A next hop the operator wrote (transport map, relay host) that the DNS says cannot work is a
configuration error, not the recipient's: it defers with 4.3.5 instead of bouncing, so mail waits
in the queue while the configuration is fixed.

Invariants: a Route is local, discard, or has candidates, or carries a Failure; candidates are
unique (ip, port) pairs in the order to try; `destination` names the next hop ("smtp:example.com:25",
"smtp:[10.0.0.5]:587", "local"...), so recipients whose routes share it may share a connection, a
transaction and a concurrency limit.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from fastmta.config import ConfigError
from fastmta.delivery.resolver import Failure, MXResolver, Resolution, to_ascii_domain

if TYPE_CHECKING:
    from fastmta.config import Config

__all__ = ["Candidate", "Decision", "NextHop", "Route", "RouteGroup", "Router", "RoutingTable",
           "Transport", "check_routing_config", "parse_relay_host", "parse_transport"]

STATUS_MISCONFIGURED = "4.3.5"  # RFC 3463 X.3.5: system incorrectly configured
STATUS_BAD_SYNTAX = "5.1.3"  # RFC 3463 X.1.3: bad destination mailbox address syntax
STATUS_LOOP = "5.4.6"  # RFC 3463 X.4.6: routing loop detected

_NEXTHOP = re.compile(r"\[(?P<bracketed>[^\[\]]+)\](?::(?P<bport>\d+))?"
                      r"|(?P<plain>[^:\[\]]+)(?::(?P<pport>\d+))?")
_STATUS_PREFIX = re.compile(r"([45])\.[0-7]\.\d{1,3}(?=\s|$)")


class Transport(enum.StrEnum):
    SMTP = "smtp"
    LMTP = "lmtp"
    LOCAL = "local"
    DISCARD = "discard"
    ERROR = "error"  # `error:` and `retry:` entries, and domains that cannot be routed


@dataclass(frozen=True)
class NextHop:
    """A transport map value or the relay host, parsed; no DNS involved yet."""

    transport: Transport
    host: str | None = None  # None: the recipient's own domain
    port: int | None = None  # None: the outbound_port setting
    mx: bool = True  # look up MX records of host; False for [host] and addresses
    failure: Failure | None = None  # for error: and retry:
    reason: str = ""  # for discard:
    spec: str = ""  # as the operator wrote it


@dataclass(frozen=True)
class Decision:
    """The static part of routing a domain: which rule matched and its next hop."""

    hop: NextHop
    decided_by: str  # "local_domains", "transport_map", "relay_host", "address_literal", "mx"
    why: str


@dataclass(frozen=True)
class Candidate:
    """One address to connect to, in the order of `Route.candidates`."""

    hostname: str  # the exchanger's name (for TLS and logs), or the address itself
    ip: str
    port: int
    preference: int | None  # MX preference; None when no MX lookup was made


@dataclass(frozen=True)
class Route:
    """Where mail for one domain goes now, or why it cannot."""

    domain: str  # ASCII, or the address literal as "[192.0.2.1]"
    transport: Transport
    destination: str
    decided_by: str
    why: str
    candidates: tuple[Candidate, ...] = ()
    failure: Failure | None = None
    resolution: Resolution | None = None  # the DNS walk, when one was made

    @property
    def ok(self) -> bool:
        return self.failure is None

    def describe(self) -> list[str]:
        """What `fastmta route` prints: the rule, the DNS walk, then candidates or the failure."""
        lines = [f"{self.domain or '(no domain)'}: {self.why}"]
        if self.resolution is not None:
            lines += self.resolution.describe()
        if self.failure is not None:
            kind = "permanent: bounce" if self.failure.permanent else "transient: retry later"
            lines.append(f"=> {self.failure.status} {self.failure.text} ({kind})")
            return lines
        for number, c in enumerate(self.candidates, 1):
            where = f"[{c.ip}]:{c.port}" if ":" in c.ip else f"{c.ip}:{c.port}"
            preference = f", MX preference {c.preference}" if c.preference is not None else ""
            lines.append(f"=> try {number}: {c.hostname} {where}{preference}")
        lines.append(f"=> destination {self.destination}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RouteGroup:
    """Recipients that go to one destination together; `route` is the route of the first one."""

    route: Route
    recipients: tuple[str, ...]


# --- parsing the configuration -----------------------------------------------------------------


def parse_transport(spec: str) -> NextHop:
    """A transport map value (see the module docstring); ValueError says what is wrong."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if kind == "local":
        if rest:
            raise ValueError("'local' takes nothing after it; write just: local")
        return NextHop(Transport.LOCAL, spec=text)
    if kind == "discard":
        return NextHop(Transport.DISCARD, reason=rest, spec=text)
    if kind in ("error", "retry"):
        return NextHop(Transport.ERROR, failure=_parse_refusal(kind, rest), spec=text)
    if kind == "smtp":
        if not rest:
            return NextHop(Transport.SMTP, spec=text)
        host, port, mx = _parse_nexthop(rest)
        return NextHop(Transport.SMTP, host, port, mx, spec=text)
    if kind == "lmtp":
        if not rest:
            raise ValueError("lmtp needs a host and a port, e.g. lmtp:[127.0.0.1]:24")
        host, port, _ = _parse_nexthop(rest)
        if port is None:
            raise ValueError(f"LMTP has no standard port; add one, e.g. lmtp:[{host}]:24")
        if port == 25:
            raise ValueError("LMTP must not be used on port 25 (RFC 2033); use the port your "
                             "LMTP server listens on, often 24")
        return NextHop(Transport.LMTP, host, port, mx=False, spec=text)
    raise ValueError(f"unknown transport {kind!r}; use smtp:, lmtp:, local, discard, error: or retry:")


def parse_relay_host(spec: str) -> NextHop:
    """`relay_host`: host, host:port, [host] or [host]:port (brackets: no MX lookup)."""
    text = spec.strip()
    if text.lower().startswith("smtp:"):
        text = text[5:]
    if not text:
        raise ValueError("is empty; give host, host:port, [host] or [host]:port")
    host, port, mx = _parse_nexthop(text)
    return NextHop(Transport.SMTP, host, port, mx, spec=spec.strip())


def _parse_nexthop(text: str) -> tuple[str, int | None, bool]:
    """(host, port or None, look up MX?) from host, host:port, [host], [host]:port."""
    match = _NEXTHOP.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not host, host:port, [host] or [host]:port "
                         "(an IPv6 address goes in brackets: [2001:db8::1]:25)")
    bracketed = match.group("bracketed") is not None
    host = (match.group("bracketed") or match.group("plain")).strip()
    port_text = match.group("bport") or match.group("pport")
    port = int(port_text) if port_text else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not 1..65535")
    if bracketed and host.lower().startswith("ipv6:"):
        host = host[5:]
    address = _ip(host)
    if address is not None:
        return address, port, False  # an address has no MX records
    if ":" in host:
        raise ValueError(f"{host!r} is not a valid IPv6 address")
    return to_ascii_domain(host), port, not bracketed


def _parse_refusal(kind: str, rest: str) -> Failure:
    permanent = kind == "error"
    status = "5.0.0" if permanent else "4.0.0"
    match = _STATUS_PREFIX.match(rest)
    if match:
        if match.group(1) != status[0]:
            other = "retry" if permanent else "error"
            raise ValueError(f"{kind}: takes a {status[0]}.X.Y status; use {other}: for "
                             f"{'a temporary' if permanent else 'a permanent'} failure")
        status, rest = match.group(0), rest[match.end():].strip()
    if not rest:
        rest = ("mail for this domain is refused by the transport map" if permanent
                else "mail for this domain is held by the transport map; it will be retried")
    return Failure(permanent, status, rest)


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _literal_ip(domain: str) -> str:
    """The address in "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3); ValueError if bad."""
    inner = domain[1:-1] if domain.endswith("]") else ""
    is_v6 = inner.lower().startswith("ipv6:")
    address = _ip(inner[5:] if is_v6 else inner)
    if address is not None and (":" in address) == is_v6:
        return address
    raise ValueError(f"address literal {domain!r} is not [IPv4] or [IPv6:address] (RFC 5321 4.1.3)")


# --- the static table --------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingTable:
    """Local domains, transport map and relay host, validated; decides without the DNS."""

    local_domains: tuple[str, ...]
    transports: Mapping[str, NextHop]
    relay: NextHop | None
    outbound_port: int

    @classmethod
    def from_config(cls, config: Config) -> RoutingTable:
        """Parse and check the routing settings; ConfigError names the setting and the fix."""
        local = tuple(config.local_domains)
        table = cls(local, MappingProxyType({}), None, config.outbound_port)
        transports: dict[str, NextHop] = {}
        for key, value in config.transport_map.items():
            where = f"entry {key!r} = {value!r}"
            if key != "*":
                try:
                    to_ascii_domain(key.removeprefix("."))
                except ValueError:
                    raise ConfigError("transport_map", f"{where}: the key must be a domain, .domain "
                                      "(its subdomains) or * (every other domain)") from None
            try:
                transports[key] = parse_transport(value)
            except ValueError as exc:
                raise ConfigError("transport_map", f"{where}: {exc}") from None
            if not key.startswith(".") and key != "*" and table.is_local(key):
                raise ConfigError("transport_map", f"{where}: {key} is also in local_domains, which "
                                  "wins; remove it from one of the two")
        relay = None
        if config.relay_host:
            try:
                relay = parse_relay_host(config.relay_host)
            except ValueError as exc:
                raise ConfigError("relay_host", f"{config.relay_host!r}: {exc}") from None
            if "*" in transports:
                raise ConfigError("transport_map", "the '*' entry catches every domain, so relay_host "
                                  "would never be used; remove one of the two")
        return cls(local, MappingProxyType(transports), relay, config.outbound_port)

    def is_local(self, domain: str) -> bool:
        for pattern in self.local_domains:
            if pattern == "*" or domain == pattern:
                return True
            if pattern.startswith("*.") and domain.endswith(pattern[1:]):
                return True
        return False

    def transport_key(self, domain: str) -> str | None:
        """The transport map key that applies to `domain`: itself, .parent, or *."""
        if not domain.startswith("["):
            if domain in self.transports:
                return domain
            labels = domain.split(".")
            for start in range(1, len(labels)):
                parent = "." + ".".join(labels[start:])
                if parent in self.transports:
                    return parent
        return "*" if "*" in self.transports else None

    def decide(self, domain: str) -> Decision:
        """The rule for `domain` (ASCII, or an address literal), in the module docstring's order."""
        if not domain:
            return Decision(NextHop(Transport.LOCAL), "local_domains",
                            "no domain (such as postmaster, RFC 5321 4.1.1.3): local delivery")
        if not domain.startswith("[") and self.is_local(domain):
            return Decision(NextHop(Transport.LOCAL), "local_domains",
                            "in local_domains: local delivery")
        key = self.transport_key(domain)
        if key is not None:
            hop = self.transports[key]
            return Decision(hop, "transport_map", f"transport_map entry {key!r} = {hop.spec!r}"
                            f"{_lookup_words(hop)}")
        if self.relay is not None:
            return Decision(self.relay, "relay_host",
                            f"relay_host {self.relay.spec!r}{_lookup_words(self.relay)}")
        if domain.startswith("["):
            return Decision(NextHop(Transport.SMTP, mx=False), "address_literal",
                            "an address literal: delivered to that address, no DNS")
        return Decision(NextHop(Transport.SMTP), "mx",
                        "no local domain, transport map entry or relay_host applies: MX lookup")


def _lookup_words(hop: NextHop) -> str:
    if hop.transport not in (Transport.SMTP, Transport.LMTP):
        return ""
    if hop.host is None:
        return " (MX lookup of the recipient domain)"
    if _ip(hop.host) is not None:
        return " (an address: no DNS)"
    return f" (MX lookup of {hop.host})" if hop.mx else f" (address lookup of {hop.host}, no MX)"


def check_routing_config(config: Config) -> None:
    """Raise ConfigError if the routing settings are unusable (for `serve` and config checks)."""
    RoutingTable.from_config(config)


# --- the router ---------------------------------------------------------------------------------


class Router:
    """Routes recipient domains; one per delivery process (its resolver caches DNS answers)."""

    def __init__(self, config: Config, resolver: MXResolver | None = None, *,
                 own_addresses: Iterable[str] = (), rng: random.Random | None = None) -> None:
        self.table = RoutingTable.from_config(config)
        self._own_addresses = frozenset(a for a in map(_ip, own_addresses) if a is not None)
        self.resolver = resolver if resolver is not None else MXResolver.from_config(
            config, own_addresses=self._own_addresses, rng=rng)

    async def route_address(self, address: str) -> Route:
        """The route for a recipient address (its domain; none: local, like postmaster)."""
        return await self.route(_domain_of(address))

    async def route(self, domain: str) -> Route:
        try:
            name = _normalise(domain)
        except ValueError as exc:
            return Route(domain, Transport.ERROR, f"error:{domain}", "syntax", "not a valid domain",
                         failure=Failure(True, STATUS_BAD_SYNTAX, f"{exc}; check the address"))
        literal = _literal_ip(name) if name.startswith("[") else None
        if literal is not None and literal in self._own_addresses:
            return Route(name, Transport.LOCAL, "local", "address_literal",
                         "an address literal naming this host: local delivery")
        decision = self.table.decide(name)
        hop = decision.hop
        if hop.transport is Transport.LOCAL:
            return Route(name, Transport.LOCAL, "local", decision.decided_by, decision.why)
        if hop.transport is Transport.DISCARD:
            why = decision.why + (f": discard ({hop.reason})" if hop.reason else ": discard")
            return Route(name, Transport.DISCARD, "discard", decision.decided_by, why)
        if hop.transport is Transport.ERROR:
            return Route(name, Transport.ERROR, f"error:{name}", decision.decided_by, decision.why,
                         failure=hop.failure)
        return await self._resolve(name, literal, decision)

    async def _resolve(self, name: str, literal: str | None, decision: Decision) -> Route:
        hop = decision.hop
        port = hop.port if hop.port is not None else self.table.outbound_port
        target = hop.host or literal or name
        configured = hop.host is not None  # the operator named this next hop
        address = _ip(target)
        if address is not None:
            destination = f"{hop.transport}:[{address}]:{port}"
            failure = None
            if address in self._own_addresses:
                failure = Failure(True, STATUS_LOOP, f"mail for {name} loops back to myself: "
                                  f"{address} is one of this host's addresses")
            route = Route(name, hop.transport, destination, decision.decided_by, decision.why,
                          candidates=(Candidate(address, address, port, None),) if failure is None else ())
            return _configured_failure(route, failure, decision) if configured else (
                _with_failure(route, failure))
        if hop.mx:
            resolution = await self.resolver.resolve_mx(target)
            destination = f"{hop.transport}:{resolution.name}:{port}"
        else:
            resolution = await self.resolver.resolve_host(target)
            destination = f"{hop.transport}:[{resolution.name}]:{port}"
        route = Route(name, hop.transport, destination, decision.decided_by, decision.why,
                      candidates=_candidates(resolution, port), resolution=resolution)
        if configured:
            return _configured_failure(route, resolution.failure, decision)
        return _with_failure(route, resolution.failure)

    async def route_recipients(self, recipients: Iterable[str]) -> list[RouteGroup]:
        """Route every recipient, grouped by destination (and failure), in first-seen order."""
        by_domain: dict[str, list[str]] = {}
        for recipient in recipients:
            by_domain.setdefault(_domain_of(recipient), []).append(recipient)
        routes = await asyncio.gather(*(self.route(domain) for domain in by_domain))
        groups: dict[tuple[str, Failure | None], tuple[Route, list[str]]] = {}
        for route, members in zip(routes, by_domain.values()):
            groups.setdefault((route.destination, route.failure), (route, []))[1].extend(members)
        return [RouteGroup(route, tuple(members)) for route, members in groups.values()]


def _domain_of(address: str) -> str:
    # rpartition: a quoted local part may itself contain "@" (RFC 5321 4.1.2)
    _, at, domain = address.strip().strip("<>").rpartition("@")
    return domain if at else ""


def _normalise(domain: str) -> str:
    text = domain.strip()
    if text.startswith("["):
        address = _literal_ip(text)
        return f"[IPv6:{address}]" if ":" in address else f"[{address}]"
    return to_ascii_domain(text) if text else ""


def _candidates(resolution: Resolution, port: int) -> tuple[Candidate, ...]:
    seen: set[str] = set()
    candidates = []
    for exchanger in resolution.exchangers:
        for address in exchanger.addresses:
            if address not in seen:  # two exchangers may share an address: try it once
                seen.add(address)
                candidates.append(Candidate(exchanger.hostname, address, port, exchanger.preference))
    return tuple(candidates)


def _with_failure(route: Route, failure: Failure | None) -> Route:
    if failure is None:
        return route
    return Route(route.domain, route.transport, route.destination, route.decided_by, route.why,
                 (), failure, route.resolution)


def _configured_failure(route: Route, failure: Failure | None, decision: Decision) -> Route:
    """A next hop from the configuration that cannot work defers (4.3.5): the fix is ours."""
    if failure is not None and failure.permanent:
        setting = "relay_host" if decision.decided_by == "relay_host" else "transport_map"
        failure = Failure(False, STATUS_MISCONFIGURED, f"{failure.text} (next hop {decision.hop.spec!r} "
                          f"from {setting}: fix the setting; the mail waits in the queue)")
    return _with_failure(route, failure)
