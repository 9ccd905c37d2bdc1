"""The MX walk of RFC 5321 5.1 against a real DNS server on 127.0.0.1 (helpers.dns_server)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.dns_server import DNSServer, Records, dns_server  # noqa: F401 (a fixture)

from fastmta.config import ConfigError, load_config
from fastmta.delivery.resolver import DnsQuery, MXResolver, Note, Outcome, Resolution

FAST = 0.3  # seconds: the DNS timeout for these tests, so timeouts cost little


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    records: Records = {
        "example.test": {"MX": ["10 mx-a.example.test", "10 mx-b.example.test",
                                "10 mx-c.example.test", "20 backup.example.test"]},
        "mx-a.example.test": {"A": "127.0.0.11", "AAAA": "::1"},
        "mx-b.example.test": {"A": "127.0.0.12"},
        "mx-c.example.test": {"A": "127.0.0.13"},
        "backup.example.test": {"A": "127.0.0.20"},
        "implicit.test": {"A": "127.0.0.30", "AAAA": "::1"},
        "nothing.test": {"TXT": '"exists, but no MX, A or AAAA"'},
        "null.test": {"MX": "0 ."},
        "alias.test": {"CNAME": "example.test"},
        "viacname.test": {"MX": "5 mail.viacname.test"},
        "mail.viacname.test": {"CNAME": "host.elsewhere.test"},
        "host.elsewhere.test": {"A": "127.0.0.40"},
    }
    with DNSServer(records, ttl=300, negative_ttl=60) as server:
        yield server


def resolver_for(server: DNSServer, **options: Any) -> MXResolver:
    return MXResolver(nameservers=[server.nameserver], timeout=FAST, **options)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def hosts(resolution: Resolution) -> list[tuple[str, int | None]]:
    return [(e.hostname, e.preference) for e in resolution.exchangers]


# --- ordering ------------------------------------------------------------------------------------


def test_preference_order_with_equal_preferences_shuffled(dns: DNSServer) -> None:
    rng = random.Random()
    resolver = resolver_for(dns, rng=rng)  # answers come from its cache after the first walk
    firsts = set()
    for seed in range(30):
        rng.seed(seed)
        result = run(resolver.resolve_mx("example.test"))
        assert result.ok
        order = hosts(result)
        assert sorted(order[:3]) == [("mx-a.example.test", 10), ("mx-b.example.test", 10),
                                     ("mx-c.example.test", 10)]
        assert order[3] == ("backup.example.test", 20)
        firsts.add(order[0][0])
        rng.seed(seed)
        assert hosts(run(resolver.resolve_mx("example.test"))) == order  # same seed, same order
    assert firsts == {"mx-a.example.test", "mx-b.example.test", "mx-c.example.test"}
    assert result.mx_records == ((10, "mx-a.example.test"), (10, "mx-b.example.test"),
                                 (10, "mx-c.example.test"), (20, "backup.example.test"))


@pytest.mark.parametrize(("order", "expected", "asks_aaaa"), [
    ("ipv6-first", ("::1", "127.0.0.11"), True),
    ("ipv4-first", ("127.0.0.11", "::1"), True),
    ("ipv4-only", ("127.0.0.11",), False),
])
def test_a_and_aaaa_in_the_chosen_order(dns: DNSServer, order: str, expected: tuple[str, ...],
                                        asks_aaaa: bool) -> None:
    result = run(resolver_for(dns, address_order=order).resolve_mx("example.test"))
    by_name = {e.hostname: e.addresses for e in result.exchangers}
    assert by_name["mx-a.example.test"] == expected
    assert by_name["mx-b.example.test"] == ("127.0.0.12",)
    assert (dns.count("mx-a.example.test", "AAAA") > 0) == asks_aaaa


def test_unknown_address_order_is_refused(dns: DNSServer) -> None:
    with pytest.raises(ValueError, match="ipv6-first"):
        resolver_for(dns, address_order="happy-eyeballs")


# --- the cases of RFC 5321 5.1 and RFC 7505 ----------------------------------------------------------


def test_no_mx_means_the_domain_itself_at_preference_0(dns: DNSServer) -> None:
    result = run(resolver_for(dns).resolve_mx("implicit.test"))
    assert result.ok and result.implicit_mx
    assert [(e.hostname, e.preference, e.addresses) for e in result.exchangers] == [
        ("implicit.test", 0, ("::1", "127.0.0.30"))]
    assert any(isinstance(s, Note) and "implicit MX" in s.text for s in result.trace)


def test_no_mx_and_no_address_is_permanent(dns: DNSServer) -> None:
    result = run(resolver_for(dns).resolve_mx("nothing.test"))
    assert result.failure is not None and result.failure.permanent
    assert result.failure.status == "5.4.4"
    assert "nothing.test has no AAAA or A record" in result.failure.text


def test_cname_of_the_domain_is_followed(dns: DNSServer) -> None:
    result = run(resolver_for(dns).resolve_mx("Alias.Test."))
    assert result.ok
    assert result.name == "alias.test" and result.canonical == "example.test"
    assert len(result.exchangers) == 4
    mx_query = result.trace[0]
    assert isinstance(mx_query, DnsQuery)
    assert mx_query.cnames == (("alias.test", "example.test"),)
    assert "alias.test is an alias for example.test." in result.describe()


def test_cname_of_an_exchanger_is_followed_and_its_mx_name_kept(dns: DNSServer) -> None:
    result = run(resolver_for(dns).resolve_mx("viacname.test"))
    assert [(e.hostname, e.preference, e.addresses) for e in result.exchangers] == [
        ("mail.viacname.test", 5, ("127.0.0.40",))]
    assert "mail.viacname.test is an alias for host.elsewhere.test." in result.describe()


def test_null_mx_is_permanent_without_address_lookups(dns: DNSServer) -> None:
    result = run(resolver_for(dns).resolve_mx("null.test"))
    assert result.failure is not None and result.failure.permanent
    assert result.failure.status == "5.1.10"
    assert "null MX" in result.failure.text
    assert [q.rdtype for q in dns.queries] == ["MX"]


def test_null_mx_mixed_with_real_ones_is_ignored(dns: DNSServer) -> None:
    dns.add("mixed.test", "MX", ["0 .", "10 mx-b.example.test"])
    result = run(resolver_for(dns).resolve_mx("mixed.test"))
    assert hosts(result) == [("mx-b.example.test", 10)]
    assert any(isinstance(s, Note) and "null MX" in s.text for s in result.trace)


def test_nxdomain_is_permanent(dns: DNSServer) -> None:
    result = run(resolver_for(dns).resolve_mx("no-such-domain.test"))
    assert result.failure is not None and result.failure.permanent
    assert result.failure.status == "5.1.2"
    assert "no-such-domain.test does not exist" in result.failure.text


@pytest.mark.parametrize("mode", ["servfail", "refused", "timeout"])
def test_dns_trouble_for_the_domain_is_transient(dns: DNSServer, mode: str) -> None:
    dns.fail("example.test", mode)
    result = run(resolver_for(dns).resolve_mx("example.test"))
    assert result.failure is not None and result.failure.transient
    assert result.failure.status == "4.4.3"
    query = result.trace[0]
    assert isinstance(query, DnsQuery)
    assert query.outcome is (Outcome.TIMEOUT if mode == "timeout" else Outcome.SERVFAIL)


def test_an_exchanger_that_cannot_be_looked_up_is_skipped(dns: DNSServer) -> None:
    dns.fail("mx-a.example.test", "timeout")
    dns.remove("mx-b.example.test")
    result = run(resolver_for(dns, rng=random.Random(0)).resolve_mx("example.test"))
    assert result.ok
    usable = [e.hostname for e in result.exchangers if e.addresses]
    assert usable[0] == "mx-c.example.test" and usable[-1] == "backup.example.test"
    problems = {e.hostname: e.problem for e in result.exchangers if e.problem}
    assert problems["mx-a.example.test"] is not None and problems["mx-a.example.test"].transient
    assert problems["mx-b.example.test"] is not None and problems["mx-b.example.test"].permanent


def test_no_exchanger_address_is_transient_if_any_lookup_was(dns: DNSServer) -> None:
    dns.add("broken.test", "MX", ["10 gone.test", "20 slow.test"])
    dns.add("slow.test", "A", "127.0.0.50")
    dns.fail("slow.test", "servfail")
    result = run(resolver_for(dns).resolve_mx("broken.test"))
    assert result.failure is not None and result.failure.transient
    dns.heal("slow.test")
    dns.remove("slow.test")
    result = run(resolver_for(dns).resolve_mx("broken.test"))
    assert result.failure is not None and result.failure.permanent
    assert result.failure.status == "5.4.4"
    assert "gone.test does not exist" in result.failure.text


def test_our_own_name_drops_itself_and_worse(dns: DNSServer) -> None:
    dns.add("hosted.test", "MX", ["5 mx-b.example.test", "10 me.test", "10 mx-c.example.test",
                                  "20 backup.example.test"])
    result = run(resolver_for(dns, own_names=["ME.test."]).resolve_mx("hosted.test"))
    assert hosts(result) == [("mx-b.example.test", 5)]
    assert result.self_preference == 10
    assert dns.count("backup.example.test", "A") == 0  # dropped before any address lookup


def test_we_are_the_best_mx_so_mail_would_loop(dns: DNSServer) -> None:
    dns.add("hosted.test", "MX", ["10 me.test", "20 backup.example.test"])
    result = run(resolver_for(dns, own_names=["me.test"]).resolve_mx("hosted.test"))
    assert result.failure is not None and result.failure.permanent
    assert result.failure.status == "5.4.6"
    assert "loops back to myself" in result.failure.text


def test_our_own_address_counts_like_our_name(dns: DNSServer) -> None:
    result = run(resolver_for(dns, own_addresses=["127.0.0.20"]).resolve_mx("example.test"))
    assert {e.preference for e in result.exchangers} == {10}
    assert result.self_preference == 20
    result = run(resolver_for(dns, own_addresses=["127.0.0.30"]).resolve_mx("implicit.test"))
    assert result.failure is not None and result.failure.status == "5.4.6"


def test_resolve_host_looks_up_addresses_only(dns: DNSServer) -> None:
    result = run(resolver_for(dns).resolve_host("mx-a.example.test"))
    assert [(e.hostname, e.preference, e.addresses) for e in result.exchangers] == [
        ("mx-a.example.test", None, ("::1", "127.0.0.11"))]
    assert dns.count("mx-a.example.test", "MX") == 0
    missing = run(resolver_for(dns).resolve_host("missing.test"))
    assert missing.failure is not None and missing.failure.status == "5.4.4"


def test_invalid_and_international_domains(dns: DNSServer) -> None:
    bad = run(resolver_for(dns).resolve_mx("exa mple..test"))
    assert bad.failure is not None and bad.failure.status == "5.1.3"
    assert dns.queries == []
    dns.add("xn--bcher-kva.test", "A", "127.0.0.60")
    idn = run(resolver_for(dns).resolve_mx("Bücher.test"))
    assert idn.name == "xn--bcher-kva.test"
    assert idn.exchangers[0].addresses == ("127.0.0.60",)


def test_large_answers_come_over_tcp(dns: DNSServer) -> None:
    dns.add("many.test", "MX", [f"{n} mx{n}.many.test" for n in range(60)])
    dns.add("mx0.many.test", "A", "127.0.0.70")
    result = run(resolver_for(dns, max_exchangers=1).resolve_mx("many.test"))
    assert len(result.mx_records) == 60
    assert hosts(result) == [("mx0.many.test", 0)]
    assert [q.transport for q in dns.queries if q.rdtype == "MX"] == ["udp", "tcp"]


# --- caching ---------------------------------------------------------------------------------------


def test_answers_are_cached_for_their_ttl(dns: DNSServer) -> None:
    clock = FakeClock()
    resolver = resolver_for(dns, clock=clock)
    dns.set("implicit.test", "A", "127.0.0.30", ttl=120)  # the MX answer is NODATA: 60 s (SOA)
    first = run(resolver.resolve_mx("implicit.test"))
    clock.now += 50
    second = run(resolver.resolve_mx("implicit.test"))
    assert dns.count("implicit.test", "MX") == 1 and dns.count("implicit.test", "A") == 1
    cached = [s for s in second.trace if isinstance(s, DnsQuery)]
    assert all(q.cached for q in cached)
    a_query = next(q for q in cached if q.rdtype == "A")
    assert a_query.ttl == 70
    assert "cached, 70 s to live" in "\n".join(second.describe())
    assert hosts(first) == hosts(second)
    clock.now += 11  # the negative MX answer expired, the A record not yet
    run(resolver.resolve_mx("implicit.test"))
    assert dns.count("implicit.test", "MX") == 2 and dns.count("implicit.test", "A") == 1
    clock.now += 60
    run(resolver.resolve_mx("implicit.test"))
    assert dns.count("implicit.test", "MX") == 3 and dns.count("implicit.test", "A") == 2


def test_a_burst_of_lookups_makes_one_query(dns: DNSServer) -> None:
    resolver = resolver_for(dns)

    async def burst() -> list[Resolution]:
        return await asyncio.gather(*(resolver.resolve_mx("example.test") for _ in range(50)))

    results = run(burst())
    assert all(r.ok for r in results)
    assert dns.count("example.test", "MX") == 1
    assert dns.count("mx-b.example.test", "A") == 1


def test_transient_failures_are_cached_only_briefly(dns: DNSServer) -> None:
    clock = FakeClock()
    resolver = resolver_for(dns, clock=clock, failure_cache_ttl=5.0)
    dns.fail("example.test", "servfail")
    assert run(resolver.resolve_mx("example.test")).failure is not None
    dns.heal("example.test")
    assert run(resolver.resolve_mx("example.test")).failure is not None  # within 5 s
    clock.now += 6
    assert run(resolver.resolve_mx("example.test")).ok


# --- the trace ---------------------------------------------------------------------------------------


def test_trace_records_every_step_in_order(dns: DNSServer) -> None:
    result = run(resolver_for(dns, rng=random.Random(3)).resolve_mx("alias.test"))
    steps = [(s.rdtype, s.name) if isinstance(s, DnsQuery) else "note" for s in result.trace]
    order = [e.hostname for e in result.exchangers]
    expected: list[Any] = [("MX", "alias.test"), "note"]
    for host in order:
        expected += [("AAAA", host), ("A", host)]
    assert steps == expected
    mx = result.trace[0]
    assert isinstance(mx, DnsQuery)
    assert mx.outcome is Outcome.ANSWER and mx.server == dns.nameserver and not mx.cached
    assert mx.records[0] == "10 mx-a.example.test."
    lines = result.describe()
    assert lines[0].startswith("$ host -t MX alias.test  (" + dns.nameserver)
    assert "example.test mail is handled by 20 backup.example.test." in lines
    assert "mx-a.example.test has IPv6 address ::1" in lines
    assert "mx-b.example.test has no AAAA record" in lines
    dumped = json.loads(json.dumps(result.to_dict()))
    assert dumped["trace"][0]["kind"] == "query" and dumped["trace"][1]["kind"] == "note"
    assert dumped["trace"][0]["cnames"] == [["alias.test", "example.test"]]
    assert dumped["exchangers"][0]["hostname"] == order[0]


def test_trace_of_failures(dns: DNSServer) -> None:
    nx = run(resolver_for(dns).resolve_mx("gone.test"))
    assert "Host gone.test not found: 3(NXDOMAIN)" in nx.describe()
    dns.fail("example.test", "timeout")
    slow = run(resolver_for(dns).resolve_mx("example.test"))
    assert "Lookup of example.test MX failed (timeout)" in slow.describe()[1]


def test_nameservers_come_from_the_config(dns: DNSServer) -> None:
    config = load_config(overrides={"dns_nameservers": dns.nameserver, "dns_timeout": FAST,
                                    "hostname": "implicit.test"})
    result = run(MXResolver.from_config(config).resolve_mx("implicit.test"))
    assert result.failure is not None and result.failure.status == "5.4.6"  # our hostname
    with pytest.raises(ConfigError, match="dns_nameservers: 'ns.example:53' is not an IP address"):
        MXResolver.from_config(config.replace(dns_nameservers=("ns.example:53",)))


ZONE = """
$TTL 600
@        IN MX 10 mail
@        IN MX 20 mail.backup.test.
mail     IN A  127.0.0.80
www      IN CNAME @
"""


def test_zone_text_through_the_shared_fixture(dns_server: DNSServer) -> None:  # noqa: F811
    dns_server.load_zone(ZONE, "zone.test")
    dns_server.add("mail.backup.test", "AAAA", "::1")
    result = run(resolver_for(dns_server).resolve_mx("zone.test"))
    assert [(e.hostname, e.preference, e.addresses) for e in result.exchangers] == [
        ("mail.zone.test", 10, ("127.0.0.80",)), ("mail.backup.test", 20, ("::1",))]
    mx = result.trace[0]
    assert isinstance(mx, DnsQuery) and mx.ttl == 600
    www = run(resolver_for(dns_server).resolve_mx("www.zone.test"))
    assert www.canonical == "zone.test" and len(www.exchangers) == 2
