"""Mail exchanger resolution (RFC 5321 5.1) over dnspython's async resolver, with a trace of every step.

`MXResolver.resolve_mx(domain)` walks the DNS as RFC 5321 5.1 says an SMTP client must:
- the MX records of the domain, CNAMEs followed, sorted by preference, and shuffled among equal
  preferences ("MUST randomize them to spread the load"), with an injectable `random.Random`;
- no MX record: the domain itself is the one exchanger, preference 0 (implicit MX);
- a null MX, "0 ." (RFC 7505 3), is a permanent failure, 5.1.10 (the code RFC 7505 registers);
- if our own name (or one of our addresses) is among the exchangers, it and everything of equal or
  worse preference is dropped; if that leaves nothing we are the best MX and the mail would loop
  back to us: a permanent failure, 5.4.6;
- every exchanger's AAAA and A records, in the order `address_order` says.
`resolve_host(name)` does only the last step, for next hops written `[host]` (no MX lookup).

Failures are classified once, here (RFC 3463 codes, for DSNs): a malformed domain is permanent
(5.1.3), so is NXDOMAIN of the domain (5.1.2), and no usable address for any exchanger (5.4.4)
unless a lookup failed transiently; SERVFAIL, REFUSED, timeouts and anything else the DNS does
wrong are transient (4.4.3), so the message is retried.

Every query's answer, served fresh or from the cache, is recorded in `Resolution.trace` in the order
it was used, with the notes on each decision, so `fastmta route` can print the walk and `--json` can
dump it.  Answers are cached per (name, type) for their TTL (negative answers for the SOA minimum,
RFC 2308 5), and concurrent lookups of one name share one query, so a burst of messages to a domain
costs one lookup.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from fastmta.config import ConfigError, parse_hostport

if TYPE_CHECKING:
    from fastmta.config import Config

__all__ = ["ADDRESS_ORDERS", "DnsQuery", "Exchanger", "Failure", "MXResolver", "Note",
           "Outcome", "Resolution", "to_ascii_domain"]

ADDRESS_ORDERS = ("ipv6-first", "ipv4-first", "ipv6-only", "ipv4-only")
_ADDRESS_TYPES = {"ipv6-first": ("AAAA", "A"), "ipv4-first": ("A", "AAAA"),
                  "ipv6-only": ("AAAA",), "ipv4-only": ("A",)}

_LDH_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")

# RFC 3463 enhanced status codes for the outcomes of a lookup.
STATUS_NO_DOMAIN = "5.1.2"  # X.1.2 bad destination system address: the domain does not exist
STATUS_BAD_SYNTAX = "5.1.3"  # X.1.3 bad destination mailbox address syntax
STATUS_NULL_MX = "5.1.10"  # X.1.10, registered by RFC 7505: recipient address has null MX
STATUS_NO_ROUTE = "5.4.4"  # X.4.4 unable to route: no usable MX or address records
STATUS_LOOP = "5.4.6"  # X.4.6 routing loop detected: we are the best MX
STATUS_DNS_TEMPORARY = "4.4.3"  # X.4.3 directory server failure


@dataclass(frozen=True)
class Failure:
    """Why mail to a destination cannot go now: `status` is an RFC 3463 code, usable in a DSN."""

    permanent: bool
    status: str
    text: str

    @property
    def transient(self) -> bool:
        return not self.permanent


class Outcome(enum.StrEnum):
    ANSWER = "answer"
    NODATA = "nodata"  # the name exists, without records of this type
    NXDOMAIN = "nxdomain"
    SERVFAIL = "servfail"  # every server answered SERVFAIL or REFUSED, or could not be reached
    TIMEOUT = "timeout"
    ERROR = "error"  # a malformed answer, a CNAME chain too long...

    @property
    def transient(self) -> bool:
        return self in (Outcome.SERVFAIL, Outcome.TIMEOUT, Outcome.ERROR)


@dataclass(frozen=True)
class DnsQuery:
    """One DNS question and what came back, as one step of a trace."""

    name: str  # as asked, no final dot
    rdtype: str  # "MX", "A", "AAAA"
    outcome: Outcome
    records: tuple[str, ...] = ()  # rdata text of the answer, e.g. "10 mx1.example.com."
    cnames: tuple[tuple[str, str], ...] = ()  # (alias, target) pairs followed, in order
    ttl: int = 0  # seconds the answer may be cached (remaining, for a cache hit)
    server: str | None = None  # "127.0.0.1:53"
    elapsed: float = 0.0  # seconds
    cached: bool = False
    detail: str = ""  # what went wrong, for the failure outcomes
    kind: str = field(default="query", init=False)

    @property
    def canonical(self) -> str:
        """The name the answer belongs to, after CNAMEs."""
        return self.cnames[-1][1] if self.cnames else self.name

    def describe(self) -> list[str]:
        """The answer in the words of host(1), one line each."""
        if self.cached:
            origin = f"cached, {self.ttl} s to live"
        else:
            origin = ", ".join(filter(None, [self.server, f"{self.elapsed * 1000:.1f} ms"]))
        lines = [f"$ host -t {self.rdtype} {self.name}  ({origin})"]
        lines += [f"{alias} is an alias for {target}." for alias, target in self.cnames]
        owner = self.canonical
        if self.outcome is Outcome.ANSWER:
            verb = {"MX": "mail is handled by", "A": "has address", "AAAA": "has IPv6 address"}
            lines += [f"{owner} {verb.get(self.rdtype, self.rdtype)} {r}" for r in self.records]
        elif self.outcome is Outcome.NODATA:
            lines.append(f"{owner} has no {self.rdtype} record")
        elif self.outcome is Outcome.NXDOMAIN:
            lines.append(f"Host {owner} not found: 3(NXDOMAIN)")
        else:
            lines.append(f"Lookup of {owner} {self.rdtype} failed ({self.outcome}): {self.detail}")
        return lines


@dataclass(frozen=True)
class Note:
    """A decision taken between queries, in words (a trace step)."""

    text: str
    kind: str = field(default="note", init=False)

    def describe(self) -> list[str]:
        return [f";; {self.text}"]


TraceStep = DnsQuery | Note


@dataclass(frozen=True)
class Exchanger:
    """A host to try, with its addresses in the order to try them (empty: see `problem`)."""

    hostname: str
    preference: int | None  # None when no MX lookup was made ([host] next hops)
    addresses: tuple[str, ...] = ()
    problem: Failure | None = None


@dataclass(frozen=True)
class Resolution:
    """The outcome of `resolve_mx` or `resolve_host`: exchangers to try in order, or a failure."""

    name: str  # what was looked up, ASCII, no final dot
    mode: str  # "mx" or "host"
    canonical: str  # after CNAMEs
    mx_records: tuple[tuple[int, str], ...]  # as published, sorted by preference
    implicit_mx: bool
    self_preference: int | None  # our own place among the MXes, if we are there
    exchangers: tuple[Exchanger, ...]  # in the order to try, those we dropped excluded
    failure: Failure | None
    trace: tuple[TraceStep, ...]

    @property
    def ok(self) -> bool:
        return self.failure is None

    def describe(self) -> list[str]:
        return [line for step in self.trace for line in step.describe()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_ascii_domain(domain: str) -> str:
    """Lower-case ASCII form of a domain, IDNA 2008 for U-labels (RFC 5890); ValueError if invalid."""
    text = domain.strip().rstrip(".")
    if not text:
        raise ValueError("the domain is empty")
    try:
        name = dns.name.from_unicode(text, origin=dns.name.root, idna_codec=dns.name.IDNA_2008)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{domain!r} is not a valid domain name: {exc}") from None
    ascii_name = name.to_text(omit_final_dot=True).lower()
    bad = [label for label in ascii_name.split(".") if not _LDH_LABEL.fullmatch(label)]
    if bad:
        raise ValueError(f"{domain!r} is not a valid domain name: label {bad[0]!r} is not letters, "
                         "digits and inner hyphens (RFC 5321 4.1.2)")
    return ascii_name


class _Cache:
    """(name, type) -> DnsQuery until its TTL runs out; least recently used entries go first."""

    def __init__(self, clock: Callable[[], float], max_entries: int) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, DnsQuery]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> DnsQuery | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, query = entry
        remaining = expires - self._clock()
        if remaining <= 0:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return replace(query, cached=True, elapsed=0.0, ttl=int(remaining))

    def put(self, key: tuple[str, str], query: DnsQuery, ttl: float) -> None:
        if ttl <= 0 or self._max_entries <= 0:
            return
        self._entries[key] = (self._clock() + ttl, query)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class MXResolver:
    """Finds the exchangers for a domain; one per process, shared by all deliveries (it caches)."""

    def __init__(self, *, nameservers: Sequence[str] = (), timeout: float = 10.0,
                 own_names: Iterable[str] = (), own_addresses: Iterable[str] = (),
                 address_order: str = "ipv6-first", rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, max_exchangers: int = 10,
                 cache_entries: int = 4096, max_cache_ttl: float = 3600.0,
                 failure_cache_ttl: float = 5.0) -> None:
        if address_order not in ADDRESS_ORDERS:
            raise ValueError(f"address_order must be one of {', '.join(ADDRESS_ORDERS)}, "
                             f"got {address_order!r}")
        self._dns = _make_dns_resolver(nameservers, timeout)
        self._own_names = frozenset(_plain_name(name) for name in own_names)
        self._own_addresses = frozenset(str(ipaddress.ip_address(a)) for a in own_addresses)
        self._address_types = _ADDRESS_TYPES[address_order]
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._max_exchangers = max_exchangers
        self._max_cache_ttl = max_cache_ttl
        self._failure_cache_ttl = failure_cache_ttl
        self._cache = _Cache(clock, cache_entries)
        self._inflight: dict[tuple[str, str], asyncio.Future[DnsQuery]] = {}

    @classmethod
    def from_config(cls, config: Config, **options: Any) -> MXResolver:
        """Nameservers, timeout and our own name from the config; `options` as for the constructor."""
        options.setdefault("own_names", (config.hostname,))
        return cls(nameservers=config.dns_nameservers, timeout=config.dns_timeout, **options)

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- single queries, cached and shared --------------------------------------------------

    async def query(self, name: str, rdtype: str) -> DnsQuery:
        """One lookup of `name` (ASCII, no final dot), from the cache when it is fresh."""
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = asyncio.ensure_future(self._query_dns(name, rdtype))
            self._inflight[key] = pending
            pending.add_done_callback(lambda done: self._forget(key, done))
        # shield: a caller that is cancelled must not cancel the lookup the others wait for
        return await asyncio.shield(pending)

    def _forget(self, key: tuple[str, str], done: asyncio.Future[DnsQuery]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]

    async def _query_dns(self, name: str, rdtype: str) -> DnsQuery:
        started = self._clock()
        query = await _ask(self._dns, name, rdtype)
        query = replace(query, elapsed=max(0.0, self._clock() - started))
        ttl = self._failure_cache_ttl if query.outcome.transient else min(query.ttl, self._max_cache_ttl)
        self._cache.put((name, rdtype), query, ttl)
        return query

    # --- the walk -------------------------------------------------------------------------------

    async def resolve_mx(self, domain: str) -> Resolution:
        """Exchangers for mail to `domain`, per RFC 5321 5.1 (see the module docstring)."""
        try:
            name = to_ascii_domain(domain)
        except ValueError as exc:
            return _failed(domain, "mx", [], Failure(True, STATUS_BAD_SYNTAX, f"{exc}; check the address"))
        trace: list[TraceStep] = []
        mx = await self.query(name, "MX")
        trace.append(mx)
        if mx.outcome is Outcome.NXDOMAIN:
            return _failed(name, "mx", trace, Failure(
                True, STATUS_NO_DOMAIN, f"domain {mx.canonical} does not exist (NXDOMAIN)"))
        if mx.outcome.transient:
            return _failed(name, "mx", trace, _dns_trouble(mx))
        records = sorted(_parse_mx(mx.records))
        candidates: list[tuple[int | None, str]]
        if not records:
            trace.append(Note(f"{mx.canonical} has no MX record: its own address records are an "
                              "implicit MX with preference 0 (RFC 5321 5.1)"))
            candidates = [(0, mx.canonical)]
        elif all(host == "" for _, host in records):
            return _failed(name, "mx", trace, Failure(
                True, STATUS_NULL_MX, f"domain {mx.canonical} accepts no mail (null MX, RFC 7505)"),
                canonical=mx.canonical, mx_records=records)
        else:
            if any(host == "" for _, host in records):
                trace.append(Note(f"{mx.canonical} mixes a null MX with other MX records "
                                  "(RFC 7505 3 forbids it): ignoring the null MX"))
            candidates = self._shuffle_equal_preferences([r for r in records if r[1]], trace)
        return await self._finish(name, "mx", mx.canonical, records, not records, candidates, trace)

    async def resolve_host(self, hostname: str) -> Resolution:
        """Addresses of one host, no MX lookup (a `[host]` next hop)."""
        try:
            name = to_ascii_domain(hostname)
        except ValueError as exc:
            return _failed(hostname, "host", [], Failure(True, STATUS_NO_ROUTE, f"{exc}; fix the name"))
        return await self._finish(name, "host", name, [], False, [(None, name)], [])

    def _shuffle_equal_preferences(self, records: list[tuple[int, str]],
                                   trace: list[TraceStep]) -> list[tuple[int | None, str]]:
        ordered: list[tuple[int | None, str]] = []
        seen: set[str] = set()
        for preference in sorted({p for p, _ in records}):
            hosts = [h for p, h in records if p == preference and h not in seen]
            seen.update(hosts)  # a host listed twice keeps its best preference
            if len(hosts) > 1:
                self._rng.shuffle(hosts)
                trace.append(Note(f"preference {preference}: {', '.join(hosts)} "
                                  "(equal preference, shuffled, RFC 5321 5.1)"))
            ordered += [(preference, host) for host in hosts]
        return ordered

    async def _finish(self, name: str, mode: str, canonical: str, records: list[tuple[int, str]],
                      implicit: bool, candidates: list[tuple[int | None, str]],
                      trace: list[TraceStep]) -> Resolution:
        """Drop ourselves and worse (RFC 5321 5.1), look up addresses, decide."""
        self_pref = self._own_preference(candidates, lambda host: host in self._own_names)
        if self_pref is not None:
            trace.append(Note(f"our own name is a mail exchanger at preference {self_pref}: "
                              "only exchangers with a lower preference value are used (RFC 5321 5.1)"))
            candidates = [c for c in candidates if not _at_or_after(c[0], self_pref)]
        if len(candidates) > self._max_exchangers:
            trace.append(Note(f"using the first {self._max_exchangers} of {len(candidates)} exchangers"))
            candidates = candidates[: self._max_exchangers]
        looked_up = await asyncio.gather(*(self._addresses(host) for _, host in candidates))
        exchangers = []
        for (preference, host), (steps, addresses, problem) in zip(candidates, looked_up):
            trace += steps
            exchangers.append(Exchanger(host, preference, addresses, problem))
        by_address = self._own_preference(
            [(e.preference, e.hostname) for e in exchangers],
            lambda host: any(a in self._own_addresses for e in exchangers
                             if e.hostname == host for a in e.addresses))
        if by_address is not None:
            trace.append(Note(f"an exchanger at preference {by_address} has one of our own "
                              "addresses: only lower preference values are used (RFC 5321 5.1)"))
            exchangers = [e for e in exchangers if not _at_or_after(e.preference, by_address)]
            self_pref = by_address if self_pref is None else min(self_pref, by_address)
        failure = _no_exchanger_failure(canonical, mode, exchangers, self_pref)
        return Resolution(name, mode, canonical, tuple(records), implicit, self_pref,
                          tuple(exchangers), failure, tuple(trace))

    @staticmethod
    def _own_preference(candidates: Sequence[tuple[int | None, str]],
                        is_ours: Callable[[str], bool]) -> int | None:
        ours = [(p if p is not None else 0) for p, host in candidates if is_ours(host)]
        return min(ours) if ours else None

    async def _addresses(self, host: str) -> tuple[list[TraceStep], tuple[str, ...], Failure | None]:
        answers = await asyncio.gather(*(self.query(host, t) for t in self._address_types))
        addresses = tuple(dict.fromkeys(r for q in answers if q.outcome is Outcome.ANSWER
                                        for r in q.records))
        if addresses:
            return list(answers), addresses, None
        troubled = [q for q in answers if q.outcome.transient]
        if troubled:
            return list(answers), (), _dns_trouble(troubled[0])
        if any(q.outcome is Outcome.NXDOMAIN for q in answers):
            text = f"{host} does not exist (NXDOMAIN)"
        else:
            text = f"{host} has no {' or '.join(self._address_types)} record"
        return list(answers), (), Failure(True, STATUS_NO_ROUTE, text)


def _plain_name(name: str) -> str:
    """Our own names as we compare them with exchangers: ASCII when IDNA allows, lower case."""
    try:
        return to_ascii_domain(name)
    except ValueError:
        return name.strip().rstrip(".").lower()


def _at_or_after(preference: int | None, cut: int) -> bool:
    return (preference if preference is not None else 0) >= cut


def _failed(name: str, mode: str, trace: list[TraceStep], failure: Failure, *,
            canonical: str | None = None, mx_records: Sequence[tuple[int, str]] = ()) -> Resolution:
    return Resolution(name, mode, canonical or name, tuple(mx_records), False, None, (), failure,
                      tuple(trace))


def _dns_trouble(query: DnsQuery) -> Failure:
    return Failure(False, STATUS_DNS_TEMPORARY,
                   f"DNS lookup of {query.rdtype} for {query.name} failed ({query.outcome}: "
                   f"{query.detail}); will retry")


def _no_exchanger_failure(canonical: str, mode: str, exchangers: Sequence[Exchanger],
                          self_pref: int | None) -> Failure | None:
    if any(e.addresses for e in exchangers):
        return None
    if not exchangers:  # everything was dropped: we are the best exchanger
        return Failure(True, STATUS_LOOP, f"mail for {canonical} loops back to myself: this host is "
                       "its best mail exchanger; list the domain in local_domains or fix its MX")
    problems = [e.problem for e in exchangers if e.problem is not None]
    transient = [p for p in problems if p.transient]
    if transient:
        return transient[0]
    what = "the host" if mode == "host" else f"any mail exchanger of {canonical}"
    details = "; ".join(p.text for p in problems)
    return Failure(True, STATUS_NO_ROUTE, f"no address for {what}: {details}")


def _parse_mx(records: Iterable[str]) -> list[tuple[int, str]]:
    """(preference, exchange) from "10 mx.example.com."; the null MX's "." becomes ""."""
    parsed = []
    for text in records:
        preference, _, host = text.partition(" ")
        parsed.append((int(preference), host.rstrip(".").lower()))
    return parsed


# --- dnspython ----------------------------------------------------------------------------------


def _make_dns_resolver(nameservers: Sequence[str], timeout: float) -> dns.asyncresolver.Resolver:
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[str | dns.nameserver.Nameserver] = []
        for item in nameservers:
            host, port = parse_hostport(item, default_port=53)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError("dns_nameservers", f"{item!r} is not an IP address; give servers "
                                  "as IP or IP:PORT, e.g. 127.0.0.1:53 or [::1]:53") from None
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = servers
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            raise ConfigError("dns_nameservers", f"the system resolver configuration is unusable "
                              f"({exc}); set dns_nameservers") from None
    # dns_timeout bounds the whole lookup; within it, up to three tries so one lost UDP packet
    # does not fail it.
    resolver.lifetime = timeout
    resolver.timeout = timeout / 3
    resolver.cache = None  # MXResolver caches, so a cache hit shows in the trace
    return resolver


async def _ask(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> DnsQuery:
    qname = dns.name.from_text(name, origin=dns.name.root)
    try:
        answer = await resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN as exc:
        response = exc.responses().get(qname)
        chain = _chain(response) if response is not None else None
        return DnsQuery(name, rdtype, Outcome.NXDOMAIN, cnames=_cname_pairs(chain),
                        ttl=chain.minimum_ttl if chain else 0)
    except dns.exception.Timeout as exc:
        return DnsQuery(name, rdtype, Outcome.TIMEOUT, detail=_first_error(exc))
    except dns.resolver.NoNameservers as exc:
        return DnsQuery(name, rdtype, Outcome.SERVFAIL, detail=_first_error(exc))
    except (dns.exception.DNSException, OSError) as exc:
        return DnsQuery(name, rdtype, Outcome.ERROR, detail=f"{type(exc).__name__}: {exc}")
    chain = answer.chaining_result
    server = f"{answer.nameserver}:{answer.port}" if answer.nameserver else None
    records = tuple(r.to_text() for r in answer.rrset) if answer.rrset is not None else ()
    if rdtype == "MX":  # the null MX and everything else in one spelling, sorted for the trace
        records = tuple(sorted(records, key=lambda r: (int(r.split()[0]), r)))
    outcome = Outcome.ANSWER if records else Outcome.NODATA
    return DnsQuery(name, rdtype, outcome, records, _cname_pairs(chain), int(chain.minimum_ttl),
                    server)


def _first_error(exc: dns.exception.DNSException) -> str:
    """The first server's error, not dnspython's text, which repeats every try of every server
    on one line: "no answer within 3.0 s; 127.0.0.1:53 timed out (first of 3 tries)",
    "127.0.0.1:53 answered SERVFAIL (first of 2 tries)"."""
    errors = exc.kwargs.get("errors") or []
    if not errors:
        return str(exc)
    server, _tcp, _port, error, _response = errors[0]
    if isinstance(error, str):  # an rcode
        said = f"{_server_text(server)} answered {error}"
    elif isinstance(error, dns.exception.Timeout):
        said = f"{_server_text(server)} timed out"
    else:
        said = f"{_server_text(server)}: {error}"
    tries = f" (first of {len(errors)} tries)" if len(errors) > 1 else ""
    lifetime = exc.kwargs.get("timeout")
    within = f"no answer within {lifetime:.1f} s; " if isinstance(lifetime, float) else ""
    return f"{within}{said}{tries}"


def _server_text(server: str | None) -> str:
    """dnspython's "Do53:127.0.0.1@53" as "127.0.0.1:53" (and "[::1]:53"); others as given."""
    if server is None:
        return "the server"
    host, at, port = server.removeprefix("Do53:").rpartition("@")
    if not at:
        return server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _chain(response: dns.message.Message) -> dns.message.ChainingResult | None:
    if not isinstance(response, dns.message.QueryMessage):
        return None
    try:
        return response.resolve_chaining()
    except dns.exception.DNSException:
        return None


def _cname_pairs(chain: dns.message.ChainingResult | None) -> tuple[tuple[str, str], ...]:
    if chain is None:
        return ()
    return tuple((rrset.name.to_text(omit_final_dot=True).lower(),
                  rrset[0].target.to_text(omit_final_dot=True).lower()) for rrset in chain.cnames)
