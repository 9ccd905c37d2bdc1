"""Next-hop routing: local domains, transport map, relay host, address literals and MX, via real DNS."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.dns_server import DNSServer, Records

from fastmta.config import Config, ConfigError, load_config
from fastmta.delivery.routing import (
    Candidate,
    Route,
    Router,
    Transport,
    check_routing_config,
    parse_relay_host,
    parse_transport,
)


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    records: Records = {
        "remote.test": {"MX": ["10 mx1.remote.test", "20 mx2.remote.test"]},
        "mx1.remote.test": {"A": "127.0.0.11", "AAAA": "::1"},
        "mx2.remote.test": {"A": ["127.0.0.12", "127.0.0.11"]},
        "other.test": {"MX": "10 mx1.remote.test"},
        "hub.test": {"MX": "5 in.hub.test"},
        "in.hub.test": {"A": "127.0.0.21"},
        "relay.test": {"A": "127.0.0.31"},
        "loopy.test": {"MX": "10 mx.self.test"},
        "null.test": {"MX": "0 ."},
    }
    with DNSServer(records) as server:
        yield server


def config_for(server: DNSServer, **overrides: Any) -> Config:
    settings = {"dns_nameservers": server.nameserver, "dns_timeout": 0.3,
                "hostname": "mx.self.test", "local_domains": "self.test,*.corp.test"}
    return load_config(overrides={**settings, **overrides})


def route(server: DNSServer, domain: str, **overrides: Any) -> Route:
    router = Router(config_for(server, **overrides), rng=random.Random(1))
    return asyncio.run(router.route(domain))


def endpoints(result: Route) -> list[tuple[str, str, int, int | None]]:
    return [(c.hostname, c.ip, c.port, c.preference) for c in result.candidates]


# --- local, MX, literals ---------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["self.test", "SELF.test.", "eu.corp.test", "a.b.corp.test", ""])
def test_local_domains_deliver_locally_without_dns(dns: DNSServer, domain: str) -> None:
    result = route(dns, domain)
    assert result.transport is Transport.LOCAL and result.ok
    assert result.destination == "local" and result.decided_by == "local_domains"
    assert dns.queries == []


def test_mx_route_lists_every_address_once_in_order(dns: DNSServer) -> None:
    result = route(dns, "remote.test")
    assert result.transport is Transport.SMTP and result.decided_by == "mx"
    assert result.destination == "smtp:remote.test:25"
    assert endpoints(result) == [("mx1.remote.test", "::1", 25, 10),
                                 ("mx1.remote.test", "127.0.0.11", 25, 10),
                                 ("mx2.remote.test", "127.0.0.12", 25, 20)]
    assert result.resolution is not None and result.resolution.mx_records[0] == (10, "mx1.remote.test")


def test_outbound_port_applies_to_mx_routes(dns: DNSServer) -> None:
    result = route(dns, "other.test", outbound_port=2525)
    assert endpoints(result) == [("mx1.remote.test", "::1", 2525, 10),
                                 ("mx1.remote.test", "127.0.0.11", 2525, 10)]


def test_dns_failures_become_route_failures(dns: DNSServer) -> None:
    nx = route(dns, "unknown.test")
    assert nx.failure is not None and nx.failure.permanent and nx.failure.status == "5.1.2"
    assert nx.candidates == ()
    null = route(dns, "null.test")
    assert null.failure is not None and null.failure.status == "5.1.10"
    dns.fail("remote.test", "servfail")
    down = route(dns, "remote.test")
    assert down.failure is not None and down.failure.transient and down.failure.status == "4.4.3"


def test_our_hostname_as_best_mx_is_a_loop(dns: DNSServer) -> None:
    result = route(dns, "loopy.test")
    assert result.failure is not None and result.failure.permanent
    assert result.failure.status == "5.4.6" and "loops back to myself" in result.failure.text


def test_address_literals_go_to_that_address(dns: DNSServer) -> None:
    v4 = route(dns, "[127.0.0.5]")
    assert v4.decided_by == "address_literal" and v4.destination == "smtp:[127.0.0.5]:25"
    assert endpoints(v4) == [("127.0.0.5", "127.0.0.5", 25, None)]
    v6 = route(dns, "[IPv6:0:0::1]")
    assert v6.domain == "[IPv6:::1]" and endpoints(v6) == [("::1", "::1", 25, None)]
    assert dns.queries == []
    for bad in ("[127.0.0.999]", "[IPv6:127.0.0.1]", "[::1]", "[tag:stuff]"):
        broken = route(dns, bad)
        assert broken.failure is not None and broken.failure.status == "5.1.3", bad


def test_an_address_literal_naming_this_host_is_local(dns: DNSServer) -> None:
    router = Router(config_for(dns), own_addresses=["127.0.0.5"])
    assert asyncio.run(router.route("[127.0.0.5]")).transport is Transport.LOCAL


def test_invalid_domains_are_permanent_syntax_errors(dns: DNSServer) -> None:
    result = route(dns, "bad_domain..test")
    assert result.failure is not None and result.failure.permanent
    assert result.failure.status == "5.1.3"


# --- the transport map -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected", "destination"), [
    ("smtp:[127.0.0.9]:2600", [("127.0.0.9", "127.0.0.9", 2600, None)], "smtp:[127.0.0.9]:2600"),
    ("smtp:[relay.test]", [("relay.test", "127.0.0.31", 25, None)], "smtp:[relay.test]:25"),
    ("smtp:[relay.test]:587", [("relay.test", "127.0.0.31", 587, None)], "smtp:[relay.test]:587"),
    ("smtp:hub.test", [("in.hub.test", "127.0.0.21", 25, 5)], "smtp:hub.test:25"),
    ("smtp:hub.test:2525", [("in.hub.test", "127.0.0.21", 2525, 5)], "smtp:hub.test:2525"),
    ("smtp:[::1]:26", [("::1", "::1", 26, None)], "smtp:[::1]:26"),
    ("lmtp:[127.0.0.7]:24", [("127.0.0.7", "127.0.0.7", 24, None)], "lmtp:[127.0.0.7]:24"),
    ("lmtp:relay.test:2424", [("relay.test", "127.0.0.31", 2424, None)], "lmtp:[relay.test]:2424"),
])
def test_transport_map_next_hops(dns: DNSServer, spec: str, expected: list[Any],
                                 destination: str) -> None:
    result = route(dns, "mapped.test", transport_map={"mapped.test": spec})
    assert result.ok and result.decided_by == "transport_map"
    assert result.transport is Transport(spec.split(":")[0])
    assert endpoints(result) == expected and result.destination == destination
    assert dns.count("mapped.test", "MX") == 0
    if spec.startswith(("smtp:[", "lmtp:")):
        assert [q for q in dns.queries if q.rdtype == "MX"] == []  # brackets: no MX lookup


def test_transport_map_local_discard_error_retry(dns: DNSServer) -> None:
    table = {"in.test": "local", "junk.test": "discard:spam trap",
             "gone.test": "error:5.1.6 this domain moved to example.org",
             "paused.test": "retry:migrating, try later", "plain.test": "error:"}
    local = route(dns, "in.test", transport_map=table)
    assert local.transport is Transport.LOCAL and local.destination == "local"
    junk = route(dns, "junk.test", transport_map=table)
    assert junk.transport is Transport.DISCARD and junk.ok and "spam trap" in junk.why
    gone = route(dns, "gone.test", transport_map=table)
    assert gone.failure is not None and gone.failure.permanent
    assert (gone.failure.status, gone.failure.text) == ("5.1.6", "this domain moved to example.org")
    paused = route(dns, "paused.test", transport_map=table)
    assert paused.failure is not None and paused.failure.transient
    assert (paused.failure.status, paused.failure.text) == ("4.0.0", "migrating, try later")
    plain = route(dns, "plain.test", transport_map=table)
    assert plain.failure is not None and plain.failure.status == "5.0.0" and plain.failure.text
    assert dns.queries == []


def test_transport_map_matches_domain_then_parents_then_star(dns: DNSServer) -> None:
    table = {"a.example.test": "smtp:[127.0.0.1]", ".example.test": "smtp:[127.0.0.2]",
             "*": "smtp:[127.0.0.3]"}
    def ip(domain: str) -> str:
        return route(dns, domain, transport_map=table).candidates[0].ip
    assert ip("a.example.test") == "127.0.0.1"
    assert ip("b.a.example.test") == "127.0.0.2"  # ".example.test" covers every subdomain
    assert ip("example.test") == "127.0.0.3"  # ...but not the domain itself
    assert ip("remote.test") == "127.0.0.3"
    assert ip("[192.0.2.1]") == "127.0.0.3"


def test_smtp_without_next_hop_bypasses_the_relay_host(dns: DNSServer) -> None:
    result = route(dns, "remote.test", relay_host="[relay.test]", transport_map={"remote.test": "smtp"})
    assert result.decided_by == "transport_map" and result.destination == "smtp:remote.test:25"
    assert result.candidates[0].hostname == "mx1.remote.test"


def test_unresolvable_configured_next_hop_defers(dns: DNSServer) -> None:
    result = route(dns, "mapped.test", transport_map={"mapped.test": "smtp:[missing.test]:25"})
    assert result.failure is not None and result.failure.transient
    assert result.failure.status == "4.3.5"
    assert "smtp:[missing.test]:25" in result.failure.text and "transport_map" in result.failure.text


# --- the relay host -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("relay", "expected", "destination", "mx_lookup"), [
    ("hub.test", [("in.hub.test", "127.0.0.21", 25, 5)], "smtp:hub.test:25", True),
    ("hub.test:2525", [("in.hub.test", "127.0.0.21", 2525, 5)], "smtp:hub.test:2525", True),
    ("[relay.test]", [("relay.test", "127.0.0.31", 25, None)], "smtp:[relay.test]:25", False),
    ("[relay.test]:587", [("relay.test", "127.0.0.31", 587, None)], "smtp:[relay.test]:587", False),
    ("127.0.0.8:2526", [("127.0.0.8", "127.0.0.8", 2526, None)], "smtp:[127.0.0.8]:2526", False),
    ("[::1]:2527", [("::1", "::1", 2527, None)], "smtp:[::1]:2527", False),
])
def test_relay_host_forms(dns: DNSServer, relay: str, expected: list[Any], destination: str,
                          mx_lookup: bool) -> None:
    result = route(dns, "remote.test", relay_host=relay)
    assert result.ok and result.decided_by == "relay_host"
    assert endpoints(result) == expected and result.destination == destination
    assert dns.count("remote.test", "MX") == 0  # the recipient domain is never looked up
    assert (dns.count("hub.test", "MX") > 0) == (mx_lookup and relay.startswith("hub"))


def test_relay_host_does_not_take_local_mail(dns: DNSServer) -> None:
    assert route(dns, "self.test", relay_host="[relay.test]").transport is Transport.LOCAL


def test_relay_host_problems_defer_instead_of_bouncing(dns: DNSServer) -> None:
    missing = route(dns, "remote.test", relay_host="[nowhere.test]")
    assert missing.failure is not None and missing.failure.transient
    assert missing.failure.status == "4.3.5" and "relay_host" in missing.failure.text
    looping = route(dns, "remote.test", relay_host="loopy.test")
    assert looping.failure is not None and looping.failure.transient
    assert "loops back to myself" in looping.failure.text


# --- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("smtp:[10.0.0.5]:0", "port 0 is not 1..65535"),
    ("smtp:host.test:99999", "port 99999 is not 1..65535"),
    ("smtp:2001:db8::1", "IPv6 address goes in brackets"),
    ("smtp:[2001:db8::zz]", "not a valid IPv6 address"),
    ("smtp:bad_host.test", "not a valid domain name"),
    ("lmtp:[127.0.0.1]", "LMTP has no standard port"),
    ("lmtp:[127.0.0.1]:25", "RFC 2033"),
    ("lmtp:", "lmtp needs a host and a port"),
    ("local:mailbox", "'local' takes nothing after it"),
    ("error:4.1.1 no", "use retry: for a temporary failure"),
    ("retry:5.1.1 no", "use error: for a permanent failure"),
    ("uucp:gateway", "unknown transport 'uucp'"),
])
def test_bad_transport_values_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_transport(spec)
    with pytest.raises(ConfigError, match="transport_map: entry 'x.test'"):
        check_routing_config(load_config(overrides={"transport_map": {"x.test": spec}}))


@pytest.mark.parametrize(("relay", "message"), [
    ("[relay.test]:0", "port 0"), ("2001:db8::1", "brackets"), ("smtp:", "is empty"),
    ("relay host.test", "not a valid domain name"),
])
def test_bad_relay_hosts_are_explained(relay: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"relay_host: .*{message}"):
        check_routing_config(load_config(overrides={"relay_host": relay}))


def test_conflicting_routing_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="also in local_domains"):
        check_routing_config(load_config(overrides={"local_domains": "a.test",
                                                    "transport_map": {"a.test": "smtp:[10.0.0.1]"}}))
    with pytest.raises(ConfigError, match="relay_host would never be used"):
        check_routing_config(load_config(overrides={"relay_host": "[10.0.0.1]",
                                                    "transport_map": {"*": "smtp"}}))
    with pytest.raises(ConfigError, match="the key must be a domain"):
        check_routing_config(load_config(overrides={"transport_map": {"bad key": "local"}}))


def test_valid_specs_parse_to_what_they_say() -> None:
    assert parse_transport("SMTP:[Relay.Test]:587").host == "relay.test"
    hop = parse_relay_host("[IPv6:2001:db8::1]:2525")
    assert (hop.host, hop.port, hop.mx) == ("2001:db8::1", 2525, False)
    assert parse_relay_host("smtp:hub.test").mx


# --- many recipients, and what `fastmta route` shows ------------------------------------------------------


def test_recipients_grouped_by_destination(dns: DNSServer) -> None:
    router = Router(config_for(dns, transport_map={"other.test": "smtp:[relay.test]",
                                                   "third.test": "smtp:[relay.test]"}))
    recipients = ["a@remote.test", "b@other.test", "c@self.test", "d@remote.test", "e@third.test",
                  '"odd@local"@remote.test', "f@unknown.test", "g@null.test", "postmaster"]
    groups = asyncio.run(router.route_recipients(recipients))
    summary = [(g.route.destination, g.recipients) for g in groups]
    assert summary == [
        ("smtp:remote.test:25", ("a@remote.test", "d@remote.test", '"odd@local"@remote.test')),
        ("smtp:[relay.test]:25", ("b@other.test", "e@third.test")),
        ("local", ("c@self.test", "postmaster")),
        ("smtp:unknown.test:25", ("f@unknown.test",)),
        ("smtp:null.test:25", ("g@null.test",)),
    ]
    assert groups[3].route.failure is not None and groups[4].route.failure is not None
    assert dns.count("remote.test", "MX") == 1 and dns.count("relay.test", "A") == 1


def test_describe_and_json_for_the_route_command(dns: DNSServer) -> None:
    result = route(dns, "remote.test")
    lines = result.describe()
    assert lines[0] == ("remote.test: no local domain, transport map entry or relay_host applies: "
                        "MX lookup")
    assert "remote.test mail is handled by 10 mx1.remote.test." in lines
    assert "=> try 1: mx1.remote.test [::1]:25, MX preference 10" in lines
    assert "=> try 3: mx2.remote.test 127.0.0.12:25, MX preference 20" in lines
    assert lines[-1] == "=> destination smtp:remote.test:25"
    dumped = json.loads(json.dumps(result.to_dict()))
    assert dumped["transport"] == "smtp" and dumped["failure"] is None
    assert dumped["candidates"][0] == {"hostname": "mx1.remote.test", "ip": "::1", "port": 25,
                                       "preference": 10}
    assert dumped["resolution"]["trace"][0]["rdtype"] == "MX"
    failed = route(dns, "null.test").describe()
    assert failed[-1].startswith("=> 5.1.10 domain null.test accepts no mail")
    assert failed[-1].endswith("(permanent: bounce)")
    mapped = route(dns, "x.test", transport_map={"x.test": "smtp:[relay.test]:587"}).describe()
    assert mapped[0] == ("x.test: transport_map entry 'x.test' = 'smtp:[relay.test]:587' "
                         "(address lookup of relay.test, no MX)")
    assert Candidate("relay.test", "127.0.0.31", 587, None) == route(
        dns, "x.test", transport_map={"x.test": "smtp:[relay.test]:587"}).candidates[0]
