"""`fastmta route`: the next-hop walk an operator reads, its JSON form, exit codes, --probe,
hints, refusal of what is not an address or a domain, and output shown as it is known.

DNS answers come from the test DNS server on 127.0.0.1; probes go to SMTP sinks on
127.0.0.x.  Some tests run `python -m fastmta route` as a process, the others call the
CLI entry point in this process (same parser, same code path, faster).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.dns_server import DNSServer
from helpers.smtp_sinks import SMTPSink

from fastmta import cli

REPO = Path(__file__).resolve().parent.parent
EX_TEMPFAIL = 75
EX_USAGE = 64
DNS_HINT = ("hint: the resolver is failing: check dns_nameservers / dns_timeout, or that the "
            "resolver is reachable")


def no_answer_hint(port: int) -> str:
    return (f"hint: outbound port {port} is often blocked by hosting providers: send through "
            'their smarthost with relay_host = "[smtp.provider.example]:587"; or the mail '
            "exchanger is down: the mail stays queued and is retried")

ZONE = {
    "example.test": {"MX": ["10 mx1.example.test", "20 mx2.example.test", "30 mx3.example.test"]},
    "mx1.example.test": {"A": "127.0.0.2"},
    "mx2.example.test": {"A": "127.0.0.3"},
    "mx3.example.test": {"A": "127.0.0.4", "AAAA": "::1"},
    "alias.test": {"CNAME": "example.test"},
    "twins.test": {"MX": ["10 a.twins.test", "10 b.twins.test"]},
    "a.twins.test": {"A": "127.0.0.5"},
    "b.twins.test": {"A": "127.0.0.6"},
    "nomx.test": {"A": "127.0.0.7"},
    "null.test": {"MX": "0 ."},
    "smarthost.test": {"A": "127.0.0.8"},
}


@pytest.fixture
def zone(dns_server: DNSServer) -> DNSServer:
    for name, records in ZONE.items():
        for rdtype, values in records.items():
            dns_server.add(name, rdtype, values)
    return dns_server


def flags(dns: DNSServer, port: int = 2525, hostname: str = "client.test") -> list[str]:
    return ["--dns-nameservers", dns.nameserver, "--outbound-port", str(port),
            "--hostname", hostname, "--dns-timeout", "3"]


def route(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`fastmta route ARGS` through the CLI entry point, in this process."""
    status = cli.main(["route", *args])
    out, err = capsys.readouterr()
    assert not err
    return status, out


def route_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastmta", "route", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_mx_records_sorted_with_each_exchanger_address_as_a_process(zone: DNSServer) -> None:
    done = route_process("user@example.test", *flags(zone))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("user@example.test: routed by its domain, example.test\n")
    assert "no local domain, transport map entry or relay_host applies: MX lookup" in out
    records = [line for line in out.splitlines() if "mail is handled by" in line]
    assert records == ["example.test mail is handled by 10 mx1.example.test.",
                       "example.test mail is handled by 20 mx2.example.test.",
                       "example.test mail is handled by 30 mx3.example.test."]
    assert "mx1.example.test has address 127.0.0.2" in out
    assert "mx3.example.test has IPv6 address ::1" in out
    assert "this host (client.test) is not among the mail exchangers of example.test" in out
    tries = [line for line in out.splitlines() if line.startswith("=> try")]
    assert tries[:2] == ["=> try 1: mx1.example.test 127.0.0.2:2525, MX preference 10",
                         "=> try 2: mx2.example.test 127.0.0.3:2525, MX preference 20"]
    assert len(tries) == 4  # mx3 has an IPv6 and an IPv4 address
    assert out.rstrip().endswith("routable: 4 addresses to try, in order")


def test_equal_preferences_are_shown_as_shuffled(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "twins.test", *flags(zone))
    assert status == 0
    assert "(equal preference, shuffled, RFC 5321 5.1)" in out
    tried = {line.split()[3] for line in out.splitlines() if line.startswith("=> try")}
    assert tried == {"a.twins.test", "b.twins.test"}


def test_cname_chain_is_followed_and_shown(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "bob@alias.test", *flags(zone))
    assert status == 0
    assert "alias.test is an alias for example.test." in out
    assert "example.test mail is handled by 10 mx1.example.test." in out
    assert "=> try 1: mx1.example.test 127.0.0.2:2525, MX preference 10" in out


def test_domain_without_mx_uses_its_address_as_implicit_mx(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "nomx.test", *flags(zone))
    assert status == 0
    assert "nomx.test has no MX record" in out
    assert "implicit MX with preference 0 (RFC 5321 5.1)" in out
    assert "=> try 1: nomx.test 127.0.0.7:2525, MX preference 0" in out


def test_null_mx_is_a_permanent_failure(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "someone@null.test", *flags(zone))
    assert status == 1
    assert "null.test mail is handled by 0 ." in out
    assert "permanent: 5.1.10 domain null.test accepts no mail (null MX, RFC 7505)" in out
    assert "=> try" not in out


def test_nxdomain_is_a_permanent_failure(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "gone.test", *flags(zone))
    assert status == 1
    assert "Host gone.test not found: 3(NXDOMAIN)" in out
    assert "permanent: 5.1.2 domain gone.test does not exist (NXDOMAIN)" in out
    assert out.rstrip().splitlines()[-1] == (
        "hint: a typo in the address, or a domain that expired: ask the recipient for an "
        "address that works")


def test_dns_server_failure_is_transient(zone: DNSServer, capsys) -> None:
    zone.fail("example.test", "servfail")
    status, out = route(capsys, "example.test", *flags(zone))
    assert status == EX_TEMPFAIL
    verdict, hint = out.rstrip().splitlines()[-2:]
    assert verdict.startswith("transient: 4.4.3 DNS lookup of MX for example.test failed")
    assert hint == DNS_HINT
    assert (f"Lookup of example.test MX failed (servfail): {zone.nameserver} answered "
            "SERVFAIL") in out  # the first server's error, not dnspython's list of them all


def test_dns_timeout_names_the_first_server_once_per_line(zone: DNSServer, capsys) -> None:
    zone.fail("example.test", "timeout")
    status, out = route(capsys, "example.test", *flags(zone), "--dns-timeout", "0.6")
    assert status == EX_TEMPFAIL
    lines = out.rstrip().splitlines()
    [query] = [line for line in lines if line.startswith("Lookup of example.test MX failed")]
    assert query.startswith("Lookup of example.test MX failed (timeout): no answer within ")
    assert f"; {zone.nameserver} timed out (first of " in query  # how many: dnspython's call
    assert all(line.count(zone.nameserver) <= 1 for line in lines)  # not every try of it
    assert "The DNS operation timed out" not in out and "lifetime" not in out
    assert lines[-2].startswith("transient: 4.4.3 DNS lookup of MX for example.test failed")
    assert lines[-1] == DNS_HINT


def test_relay_host_applies_without_any_dns_lookup(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "user@example.test", *flags(zone),
                        "--relay-host", "[127.0.0.9]:2526")
    assert status == 0
    assert "example.test: relay_host '[127.0.0.9]:2526' (an address: no DNS)" in out
    assert "=> try 1: 127.0.0.9 127.0.0.9:2526" in out
    assert zone.queries == []


def test_relay_host_by_name_shows_its_mx_walk(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "user@example.test", *flags(zone), "--relay-host", "smarthost.test")
    assert status == 0
    assert "relay_host 'smarthost.test' (MX lookup of smarthost.test)" in out
    assert "smarthost.test has no MX record" in out
    assert "=> try 1: smarthost.test 127.0.0.8:2525" in out


def test_transport_map_entry_wins_and_others_still_use_mx(zone: DNSServer, capsys) -> None:
    mapping = ["--transport-map", "example.test=smtp:[127.0.0.5]:26"]
    status, out = route(capsys, "user@example.test", *flags(zone), *mapping)
    assert status == 0
    assert "transport_map entry 'example.test' = 'smtp:[127.0.0.5]:26'" in out
    assert "=> try 1: 127.0.0.5 127.0.0.5:26" in out
    status, out = route(capsys, "user@nomx.test", *flags(zone), *mapping)
    assert "MX lookup" in out and "127.0.0.7" in out


def test_transport_map_error_entry_bounces(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "user@example.test", *flags(zone),
                        "--transport-map", "example.test=error:5.7.1 we do not send there")
    assert status == 1
    assert "permanent: 5.7.1 we do not send there" in out


def test_own_hostname_among_mxes_keeps_only_better_ones(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "user@example.test", *flags(zone, hostname="mx2.example.test"))
    assert status == 0
    assert ("this host (as mx2.example.test) is a mail exchanger of example.test at "
            "preference 20; it passes its mail on only to mx1.example.test") in out
    tries = [line for line in out.splitlines() if line.startswith("=> try")]
    assert tries == ["=> try 1: mx1.example.test 127.0.0.2:2525, MX preference 10"]


def test_own_hostname_as_best_mx_is_a_loop(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "user@example.test", *flags(zone, hostname="mx1.example.test"))
    assert status == 1
    assert "is the best mail exchanger" in out
    assert "5.4.6 mail for example.test loops back to myself" in out


def test_local_domain_needs_no_dns(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "postmaster@localhost", *flags(zone))
    assert status == 0
    assert "localhost: in local_domains: local delivery" in out
    assert out.rstrip().endswith("routable: delivered on this host (local_domains)")
    assert zone.queries == []


def test_json_for_scripts_as_a_process(zone: DNSServer) -> None:
    done = route_process("user@alias.test", "--json", *flags(zone))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "routable" and report["exit_status"] == 0
    assert report["address"] == "user@alias.test" and report["domain"] == "alias.test"
    candidates = report["route"]["candidates"]
    assert [(c["hostname"], c["ip"], c["preference"]) for c in candidates[:2]] == [
        ("mx1.example.test", "127.0.0.2", 10), ("mx2.example.test", "127.0.0.3", 20)]
    first = report["route"]["resolution"]["trace"][0]
    assert first["kind"] == "query" and first["rdtype"] == "MX"
    assert first["cnames"] == [["alias.test", "example.test"]]
    assert report["probes"] is None


def test_json_of_a_failure(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, "null.test", "--json", *flags(zone))
    failed = json.loads(out)
    assert status == 1
    assert failed["verdict"] == "permanent" and failed["exit_status"] == 1
    assert failed["route"]["failure"]["status"] == "5.1.10"


@pytest.fixture
def second_mx_only() -> Iterator[SMTPSink]:
    """mx2 (127.0.0.3) answers, mx1 (127.0.0.2) refuses on the same port."""
    with SMTPSink("127.0.0.3") as sink, socket.socket() as refusing:
        refusing.bind(("127.0.0.2", sink.port))  # bound, not listening: connections get RST
        yield sink


def test_probe_shows_greeting_and_extensions_and_sends_no_mail(
        zone: DNSServer, second_mx_only: SMTPSink) -> None:
    sink = second_mx_only
    zone.set("mx3.example.test", "A", [])
    zone.set("mx3.example.test", "AAAA", [])
    done = route_process("user@example.test", "--probe", *flags(zone, port=sink.port))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    first, second = out.split("probe 1: ", 1)[1].split("probe 2: ", 1)
    assert first.startswith(f"mx1.example.test[127.0.0.2]:{sink.port}")
    assert "Connection refused" in first and "=> accepts mail: no" in first
    for line in ("220 sink.test ESMTP test sink", ">>> EHLO client.test", "250-PIPELINING",
                 "250 ENHANCEDSTATUSCODES", ">>> QUIT", "221 2.0.0 Bye"):
        assert f"  {line}\n" in second
    assert ("=> accepts mail: yes: ESMTP, extensions: PIPELINING, SIZE 0, 8BITMIME, "
            "ENHANCEDSTATUSCODES") in second
    sink.wait_until(lambda: all(session.closed for session in sink.sessions))
    assert [session.commands for session in sink.sessions] == [["EHLO client.test", "QUIT"]]
    assert sink.messages == []


def test_probe_finding_nobody_answering_is_transient(zone: DNSServer, capsys) -> None:
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.7", 0))
        port = refusing.getsockname()[1]
        status, out = route(capsys, "nomx.test", "--probe", "--json", *flags(zone, port=port))
    report = json.loads(out)
    assert status == EX_TEMPFAIL and report["verdict"] == "transient"
    assert [p["ok"] for p in report["probes"]] == [False]
    assert "Connection refused" in report["probes"][0]["error"]
    assert report["hint"] == no_answer_hint(port).removeprefix("hint: ")
    assert report["probes"][0]["hint"] is None  # refused, not silent: no firewall ate it


def test_a_host_that_never_greets_times_out_with_a_hint(zone: DNSServer, capsys) -> None:
    with SMTPSink("127.0.0.7", silent=True) as sink:
        status, out = route(capsys, "nomx.test", "--probe", *flags(zone, port=sink.port),
                            "--connect-timeout", "1")
    assert status == EX_TEMPFAIL
    block = out.split("probe 1: ", 1)[1]
    assert ("  => accepts mail: no: no reply to greeting within 1 s\n"
            f"  {no_answer_hint(sink.port)}\n") in block
    assert out.rstrip().splitlines()[-2:] == [
        "transient: no candidate answers now; the mail would wait in the queue and be retried",
        no_answer_hint(sink.port)]


def test_text_is_shown_before_a_probe_that_hangs_ends(zone: DNSServer) -> None:
    """The probed host accepts the connection and never greets, and the connect timeout is
    long: the process cannot end before this test closes that connection, so whatever it
    read by then was printed while the probe still waited."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.7", 0))
        mute.listen()
        mute.settimeout(30)
        port = mute.getsockname()[1]
        command = [sys.executable, "-m", "fastmta", "route", "nomx.test", "--probe",
                   *flags(zone, port=port), "--connect-timeout", "60"]
        with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as process:
            assert process.stdout is not None
            try:
                shown = []
                while not shown or not shown[-1].startswith("probing "):
                    line = process.stdout.readline()
                    assert line, f"ended early: {shown}"
                    shown.append(line)
                assert process.poll() is None
                connection, _ = mute.accept()  # the probe's; the host hangs up: it ends now
                connection.close()
                rest, err = process.communicate(timeout=60)
            finally:
                process.kill()
    assert process.returncode == EX_TEMPFAIL, err
    assert shown[0] == "nomx.test: no local domain, transport map entry or relay_host applies: " \
                       "MX lookup\n"
    assert "nomx.test has no MX record\n" in shown
    assert f"=> try 1: nomx.test 127.0.0.7:{port}, MX preference 0\n" in shown
    assert shown[-1] == ("probing 1 address at once (EHLO and QUIT only; each step waits up to "
                         "connect_timeout, 60 s)\n")
    assert rest.startswith(f"probe 1: nomx.test[127.0.0.7]:{port}\n")
    assert "  => accepts mail: no: connection lost\n" in rest
    assert ("\ntransient: no candidate answers now; the mail would wait in the queue and be "
            "retried\n") in rest


def test_probe_of_a_refusing_greeting(zone: DNSServer, capsys) -> None:
    with SMTPSink("127.0.0.7", greeting="554 5.7.1 no service for you") as sink:
        status, out = route(capsys, "nomx.test", "--probe", *flags(zone, port=sink.port))
        sink.wait_until(lambda: all(session.closed for session in sink.sessions))
    assert status == EX_TEMPFAIL
    assert "  554 5.7.1 no service for you\n" in out
    assert "=> accepts mail: no: the server refused the session in its greeting" in out
    assert sink.sessions[0].commands == ["QUIT"]


@pytest.mark.parametrize(("target", "problem"), [
    ("", "no address or domain given"),
    ("user@", "'user@' is not an address: nothing after the @ (the domain is missing)"),
    ("a b@example.test", "'a b@example.test' is not an address: it contains a space"),
    ("@example.test",
     "'@example.test' is not an address: nothing before the @ (the user part is missing)"),
])
def test_what_is_not_an_address_or_a_domain_is_a_usage_error(
        zone: DNSServer, capsys, target: str, problem: str) -> None:
    status = cli.main(["route", target, *flags(zone)])
    out, err = capsys.readouterr()
    assert status == EX_USAGE and out == ""
    assert err.startswith(f"fastmta route: {problem}")
    assert err.endswith("; give user@domain or a domain\n") and err.count("\n") == 1
    assert zone.queries == []


def test_a_quoted_user_part_may_hold_a_space(zone: DNSServer, capsys) -> None:
    status, out = route(capsys, '"a b"@example.test', *flags(zone))
    assert status == 0
    assert out.startswith('"a b"@example.test: routed by its domain, example.test\n')


def test_help_lists_every_exit_status(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["route", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("Exit status: 0 routable, 1 permanent failure (the mail would bounce), 75 transient "
            "failure (it would wait in the queue), 2 bad configuration, 64 not an address or a "
            "domain.") in text


def test_bad_configuration_exits_2_with_the_setting_named(capsys) -> None:
    status = cli.main(["route", "example.test", "--transport-map", "example.test=bogus:x"])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert "configuration error: transport_map" in err and "unknown transport 'bogus'" in err
