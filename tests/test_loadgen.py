"""`fastmta loadgen` against a real SMTP sink on 127.0.0.1: what it sends, counts and reports."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers.loadgen_sink import LoadgenSink, unstuff

from fastmta.cli import main
from fastmta.loadgen.body import build_content, build_headers, wire_data
from fastmta.loadgen.runner import LoadSpec
from fastmta.loadgen.stats import CPU_BOUND_SHARE, LatencyHistogram, Report, WorkerResult

REPO = Path(__file__).resolve().parent.parent
JSON_FIELDS = {
    "target", "connections", "connections_used", "messages", "size", "per_connection", "recipients", "pipelining",
    "starttls", "processes", "duration", "messages_attempted", "messages_accepted",
    "messages_failed", "all_accepted", "stopped_by", "elapsed_s", "messages_per_s", "mb_per_s",
    "latency_ms", "connections_opened", "sessions_pipelined", "connect_errors",
    "session_errors", "replies_by_code", "replies_by_stage", "cpu_s",
    "cpu_share_busiest_process", "cpu_bound", "hint",
}


@pytest.fixture
def sink() -> Iterator[LoadgenSink]:
    with LoadgenSink() as running:
        yield running


def loadgen(capsys: pytest.CaptureFixture[str], port: int, *args: str) -> tuple[int, str, str]:
    """Run `fastmta loadgen` in this process; exit status, stdout, stderr."""
    status = main(["loadgen", f"127.0.0.1:{port}", "--timeout", "10", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def loadgen_json(capsys: pytest.CaptureFixture[str], port: int, *args: str
                 ) -> tuple[int, dict]:
    status, out, _ = loadgen(capsys, port, "--json", *args)
    return status, json.loads(out)


def loadgen_process(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m fastmta loadgen` as its own process (stderr is a pipe, not a TTY)."""
    return subprocess.run(
        [sys.executable, "-m", "fastmta", "loadgen", f"127.0.0.1:{port}", "--timeout", "10",
         *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


def test_every_message_gets_its_250(capsys, sink):
    status, out, _ = loadgen(capsys, sink.port, "-c", "4", "-m", "40", "-s", "2000")
    assert status == 0
    assert sink.counters.accepted == 40
    assert "40 sent, 40 got 250, 0 failed" in out
    assert "every message got its 250" in out
    assert "p99" in out and "msg/s" in out


def test_json_has_every_field_and_the_counts(capsys, sink):
    status, report = loadgen_json(capsys, sink.port, "-c", "3", "-m", "30")
    assert status == 0
    assert JSON_FIELDS <= report.keys()
    assert report["messages_accepted"] == report["messages_attempted"] == 30
    assert report["all_accepted"] is True
    assert report["latency_ms"]["samples"] == 30
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] \
        <= report["latency_ms"]["max"]
    assert report["messages_per_s"] > 0 and report["mb_per_s"] > 0
    assert report["replies_by_code"] == {} and report["connect_errors"] == {}
    assert report["target"] == f"127.0.0.1:{sink.port}"


@pytest.mark.parametrize(("messages", "per_connection", "connections"),
                         [(30, 5, 6), (30, 4, 8), (10, 1, 10)])
def test_per_connection_sets_the_number_of_connections(capsys, sink, messages, per_connection,
                                                        connections):
    status, report = loadgen_json(capsys, sink.port, "-c", "3", "-m", str(messages),
                                  "-k", str(per_connection))
    assert status == 0
    assert sink.counters.connections == connections == report["connections_opened"]
    assert sink.counters.accepted == messages


@pytest.mark.parametrize("pipelining", ["--pipelining", "--no-pipelining"])
def test_recipients_pattern_gives_r_distinct_recipients(capsys, sink, pipelining):
    status, _ = loadgen_json(capsys, sink.port, "-c", "2", "-m", "6", "-r", "3",
                             "--to", "box{n}@example.test", "--from", "me@example.org",
                             pipelining)
    assert status == 0
    assert len(sink.counters.received) == 6
    for message in sink.counters.received:
        assert message.sender.startswith(b"<me@example.org>")
        assert message.recipients == [b"<box1@example.test>", b"<box2@example.test>",
                                      b"<box3@example.test>"]


def test_comma_list_of_recipients_is_used_in_turn(capsys, sink):
    status, _ = loadgen_json(capsys, sink.port, "-c", "1", "-m", "3", "-r", "2",
                             "--to", "a@x.test,b@x.test,c@x.test")
    assert status == 0
    assert [message.recipients for message in sink.counters.received] == [
        [b"<a@x.test>", b"<b@x.test>"], [b"<c@x.test>", b"<a@x.test>"],
        [b"<b@x.test>", b"<c@x.test>"],
    ]


def test_pipelines_when_offered(capsys, sink):
    status, report = loadgen_json(capsys, sink.port, "-c", "2", "-m", "8", "-k", "4", "-r", "2")
    assert status == 0
    assert report["sessions_pipelined"] == 2
    assert sink.counters.pipelined_connections == 2
    assert sink.counters.most_commands_in_one_read >= 4  # MAIL, RCPT, RCPT, DATA


def test_no_pipelining_sends_one_command_at_a_time(capsys, sink):
    status, report = loadgen_json(capsys, sink.port, "-c", "2", "-m", "8", "-k", "4", "-r", "2",
                                  "--no-pipelining")
    assert status == 0
    assert report["sessions_pipelined"] == 0
    assert sink.counters.most_commands_in_one_read == 1
    assert sink.counters.accepted == 8


def test_does_not_pipeline_when_the_server_does_not_offer_it(capsys):
    with LoadgenSink(pipelining=False) as sink:
        status, report = loadgen_json(capsys, sink.port, "-c", "2", "-m", "6", "-k", "3")
    assert status == 0
    assert report["sessions_pipelined"] == 0
    assert sink.counters.most_commands_in_one_read == 1


@pytest.mark.parametrize("pipelining", ["--pipelining", "--no-pipelining"])
def test_refused_messages_are_counted_by_code_and_fail_the_run(capsys, pipelining):
    def every_third(number: int) -> bytes | None:
        return b"451 4.3.0 try again later" if number % 3 == 0 else None

    with LoadgenSink(end_of_data_reply=every_third) as sink:
        status, report = loadgen_json(capsys, sink.port, "-c", "2", "-m", "30", "-k", "5",
                                      pipelining)
    assert status == 1
    assert report["replies_by_code"] == {"451": 10}
    assert report["replies_by_stage"] == {"end-of-data 451": 10}
    assert report["messages_accepted"] == 20 and report["messages_failed"] == 10
    assert report["all_accepted"] is False
    assert report["latency_ms"]["samples"] == 20


@pytest.mark.parametrize("pipelining", ["--pipelining", "--no-pipelining"])
def test_refused_recipient_is_counted_and_fails_the_run(capsys, pipelining):
    def refuse_second(address: bytes) -> bytes | None:
        return b"550 5.1.1 no such user" if address == b"<u2@example.test>" else None

    with LoadgenSink(rcpt_reply=refuse_second) as sink:
        status, out, _ = loadgen(capsys, sink.port, "-c", "2", "-m", "6", "-k", "3", "-r", "2",
                                 "--to", "u{n}@example.test", pipelining)
    assert status == 1
    assert "RCPT 550 x6" in out
    assert sink.counters.accepted == 6  # delivered to the recipient that was accepted
    assert all(message.recipients == [b"<u1@example.test>"]
               for message in sink.counters.received)


def test_every_recipient_refused_fails_each_message_without_data(capsys):
    with LoadgenSink(rcpt_reply=lambda address: b"550 5.1.1 no") as sink:
        status, report = loadgen_json(capsys, sink.port, "-c", "1", "-m", "4", "-k", "2")
    assert status == 1
    assert sink.counters.messages == 0
    assert report["messages_failed"] == 4
    assert report["replies_by_stage"] == {"DATA 554": 4, "RCPT 550": 4}


def test_connection_refused_says_so_and_fails(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, out, err = loadgen(capsys, port, "-c", "2", "-m", "5")
    assert status == 1
    assert f"cannot connect to 127.0.0.1:{port}" in err
    assert "connection refused" in err
    assert "FAILED, 5 message(s) did not get a 250" in out


def test_server_hanging_up_mid_message_fails_those_messages(capsys):
    with LoadgenSink(hang_up_at=lambda number: number == 5) as sink:
        status, report = loadgen_json(capsys, sink.port, "-c", "1", "-m", "10", "-k", "10")
    assert status == 1
    # The fifth and the sixth (already pipelined behind it) fail and are not sent again;
    # the four never started go out on a new connection.
    assert report["messages_attempted"] == 10
    assert report["messages_failed"] == 2
    assert report["messages_accepted"] == 8 == sink.counters.accepted
    assert report["session_errors"] == {
        "connection closed by server while waiting for end-of-data reply": 1}
    assert sink.counters.connections == 2


def test_silent_server_times_out_instead_of_hanging(capsys):
    with LoadgenSink(silent=True) as sink:
        status, report = loadgen_json(capsys, sink.port, "-c", "2", "-m", "2", "--timeout", "0.5")
    assert status == 1
    assert report["session_errors"] == {"no reply within 0.5 s": 6}  # each slot tries 3 times
    assert report["messages_attempted"] == 0


def test_duration_stops_the_run_early(capsys, sink):
    status, report = loadgen_json(capsys, sink.port, "-c", "2", "-m", "10000000",
                                  "--duration", "1")
    assert status == 0
    assert report["stopped_by"] == "duration"
    assert 0 < report["messages_attempted"] < 10_000_000
    assert report["messages_accepted"] == report["messages_attempted"] == sink.counters.accepted
    assert report["elapsed_s"] >= 0.95  # libuv timers have millisecond granularity


def test_duration_without_message_count_is_unbounded_until_the_time(capsys, sink):
    status, report = loadgen_json(capsys, sink.port, "--duration", "0.5")
    assert status == 0
    assert report["messages"] is None and report["stopped_by"] == "duration"
    assert report["messages_accepted"] == sink.counters.accepted > 0


def test_processes_merge_their_results():
    with LoadgenSink() as sink:
        finished = loadgen_process(sink.port, "-P", "2", "-c", "4", "-m", "41", "-k", "3",
                                   "--json")
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    assert report["processes"] == 2
    assert report["messages_accepted"] == 41 == sink.counters.accepted
    assert report["latency_ms"]["samples"] == 41
    # 41 = 21 + 20 messages, 3 per connection: 7 + 7 connections
    assert report["connections_opened"] == 14 == sink.counters.connections
    assert report["cpu_s"] > 0
    assert finished.stderr == ""  # stderr is not a terminal: no progress line


def test_progress_lines_when_asked_for():
    with LoadgenSink() as sink:
        finished = loadgen_process(sink.port, "-m", "10000000", "--duration", "1.2",
                                   "--progress")
    assert finished.returncode == 0, finished.stderr
    lines = finished.stderr.splitlines()
    assert lines and all("msgs" in line and "msg/s" in line and "errors 0" in line
                         for line in lines)


def test_progress_of_several_processes_counts_every_process():
    with LoadgenSink() as sink:
        finished = loadgen_process(sink.port, "-P", "2", "-c", "4", "-m", "400", "-k", "20",
                                   "--progress", "--json")
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["messages_accepted"] == 400 == sink.counters.accepted
    done = [int(line.split()[2].split("/")[0]) for line in finished.stderr.splitlines()]
    assert done == sorted(done)
    # Each process sends 200: a last line short of 400 would have left one out.
    assert done[-1] == 400
    assert "400/400 msgs" in finished.stderr.splitlines()[-1]


def test_too_few_messages_for_the_connections_warns_and_reports_what_runs(capsys, sink):
    status, out, err = loadgen(capsys, sink.port, "-c", "20", "-m", "60", "-k", "10")
    assert status == 0
    assert sink.counters.connections == 6
    assert err.splitlines()[0] == ("fastmta loadgen: only 6 of 20 connections will be used: "
                                   "raise --messages or lower --per-connection")
    assert "6 connections (of 20 asked for) x 10 msg each" in out
    _, report = loadgen_json(capsys, sink.port, "-c", "20", "-m", "60", "-k", "10")
    assert report["connections"] == 20 and report["connections_used"] == 6


def test_fewer_messages_than_connections_says_to_lower_connections(capsys, sink):
    status, out, err = loadgen(capsys, sink.port, "-c", "5", "-m", "3")
    assert status == 0
    assert "only 3 of 5 connections will be used: raise --messages or lower --connections" in err
    assert "3 connections (of 5 asked for) x 1 msg each" in out


def test_enough_messages_for_every_connection_gives_no_warning(capsys, sink):
    status, out, err = loadgen(capsys, sink.port, "-c", "4", "-m", "13", "-k", "4")
    assert status == 0
    assert err == ""
    assert "4 connections x 4 msg each" in out


def test_duration_without_messages_uses_every_connection(capsys, sink):
    # The slots reconnect until the time is up: each opens one connection here and
    # keeps it for the whole run, so all four were open at once.
    status, out, err = loadgen(capsys, sink.port, "--json", "-c", "4", "-k", "1000000",
                               "--duration", "0.5")
    assert status == 0
    assert err == ""
    assert json.loads(out)["connections_used"] == 4 == sink.counters.connections


def test_duration_with_too_few_messages_still_warns(capsys, sink):
    # Messages and a duration: the budget of messages still ends the slots.
    status, out, err = loadgen(capsys, sink.port, "--json", "-c", "4", "-m", "2", "-k", "1",
                               "--duration", "30")
    assert status == 0
    assert "only 2 of 4 connections will be used" in err
    report = json.loads(out)
    assert report["connections_used"] == 2 == sink.counters.connections
    assert report["stopped_by"] == "messages"


@pytest.mark.parametrize(("connections", "messages", "per_connection", "processes", "used"), [
    (20, 6000, 1000, 1, 6),
    (20, 6000, 300, 1, 20),
    (20, 5, 1, 1, 5),
    (3, 10, 4, 1, 3),
    (4, 8, 3, 2, 4),  # 4 + 4 messages: ceil(4/3) = 2 connections in each process
    (20, 6, 1000, 2, 2),  # 3 + 3 messages: one connection in each process
    (4, 41, 3, 2, 4),
])
def test_connections_used_per_process(connections, messages, per_connection, processes, used):
    spec = LoadSpec("127.0.0.1", 25, connections=connections, messages=messages,
                    per_connection=per_connection, processes=processes)
    assert spec.connections_used == used
    assert (spec.unused_connections() is None) == (used == connections)
    assert spec.settings()["connections_used"] == used


def test_connections_used_without_messages_is_every_connection():
    spec = LoadSpec("127.0.0.1", 25, connections=7, messages=None, per_connection=1000,
                    processes=2, duration=5)
    assert spec.connections_used == 7 and spec.unused_connections() is None


def report_with(share: float, processes: int = 1, cores: int = 4,
                connect_errors: dict[str, int] | None = None) -> Report:
    """A report of a run that went well, but for the CPU share and connect errors given."""
    spec = LoadSpec("127.0.0.1", 25, connections=processes, messages=100,
                    processes=processes)
    total = WorkerResult(attempted=100, accepted=100, connections=100, started=10.0,
                         finished=12.0, cpu_seconds=2 * share * processes,
                         connect_errors=connect_errors or {})
    return Report(settings=spec.settings(), total=total, busiest_cpu_share=share,
                  processes=processes, cores=cores)


def test_cpu_bound_with_cores_to_spare_says_add_processes():
    report = report_with(0.95, processes=1, cores=4)
    assert report.cpu_bound
    hint = report.hint()
    assert hint is not None and hint.startswith("loadgen was CPU-bound; add --processes")
    assert "at most 4" in hint
    assert hint in report.render().splitlines()
    assert report.to_dict()["hint"] == hint and report.to_dict()["cpu_bound"] is True


@pytest.mark.parametrize(("processes", "cores"), [(2, 2), (4, 2), (1, 1)])
def test_cpu_bound_on_every_core_says_use_another_machine(processes, cores):
    hint = report_with(0.95, processes=processes, cores=cores).hint()
    assert hint is not None
    assert "--processes" not in hint
    assert hint.startswith("loadgen was CPU-bound on every core it has; run it on another "
                           "machine")


@pytest.mark.parametrize("share", [0.3, CPU_BOUND_SHARE - 0.01])
def test_not_cpu_bound_gives_no_hint(share):
    report = report_with(share, processes=1, cores=4)
    assert not report.cpu_bound and report.hint() is None
    assert report.to_dict()["hint"] is None
    assert "CPU-bound" not in report.render()


def test_cpu_bound_starts_at_the_threshold():
    assert report_with(CPU_BOUND_SHARE).cpu_bound


@pytest.mark.parametrize("share", [0.3, 0.95])
def test_ports_running_out_says_so_before_cpu(share):
    report = report_with(share, connect_errors={"cannot assign requested address": 12})
    hint = report.hint()
    assert hint is not None and hint.startswith("the local ports ran out")
    assert "(-k)" in hint
    assert not report.all_accepted


def test_body_has_dot_lines_and_long_lines_and_arrives_intact(capsys, sink):
    status, _ = loadgen_json(capsys, sink.port, "-c", "2", "-m", "4", "-s", "20000", "-k", "2")
    assert status == 0
    contents = {message.content for message in sink.counters.received}
    assert len(contents) == 1  # built once, sent four times
    content = contents.pop()
    assert len(content) == 20000
    lines = content.split(b"\r\n")
    assert lines[-1] == b""
    assert b"." in lines and b".." in lines  # the client stuffed them, the sink unstuffed
    assert any(line.startswith(b".") and len(line) > 2 for line in lines)
    assert any(800 <= len(line) <= 998 for line in lines)
    assert max(len(line) for line in lines) <= 998
    assert content.startswith(b"From: ") and b"\r\n\r\n" in content


def test_starttls_upgrades_every_session(capsys):
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("sink.test").configure_cert(context)
    with LoadgenSink(tls_context=context) as sink:
        status, report = loadgen_json(capsys, sink.port, "-c", "2", "-m", "6", "-k", "3",
                                      "--starttls")
    assert status == 0
    assert report["sessions_tls"] == 2 == sink.counters.tls_sessions
    assert sink.counters.accepted == 6


def test_starttls_not_offered_is_an_error(capsys, sink):
    status, report = loadgen_json(capsys, sink.port, "-m", "1", "--starttls")
    assert status == 1
    assert report["session_errors"] == {"server does not offer STARTTLS": 3}
    assert sink.counters.messages == 0


@pytest.mark.parametrize(("args", "message"), [
    (["-c", "2", "-P", "3"], "--connections must be at least --processes"),
    (["-s", "100"], "use a size of at least"),
    (["--to", "a b@x"], "--to must be plain ASCII"),
])
def test_bad_arguments_say_what_to_do(capsys, args, message):
    status, _, err = loadgen(capsys, 25, *args)
    assert status == 2
    assert message in err


@pytest.mark.parametrize("size", [*range(270, 700, 37), 1024, 4095, 65536, 100_000])
def test_content_is_exact_size_and_survives_stuffing(size):
    headers = build_headers("a@example.com", "b@example.test", "Sun, 29 Nov 2026 12:00:00 +0000",
                            "id@example.com")
    content = build_content(size, headers, seed=size)
    assert len(content) == size
    assert content.isascii() and content.endswith(b"\r\n")
    assert max(len(line) for line in content.split(b"\r\n")) <= 998
    wire = wire_data(content)
    assert wire.endswith(b"\r\n.\r\n") and b"\r\n.\r\n" not in wire[:-3]
    assert unstuff(wire[:-3]) == content


def test_histograms_merge_as_if_one():
    samples = [i * 1.7e-5 for i in range(1, 3000)] + [0.5, 2.0]
    whole, first, second = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for index, sample in enumerate(samples):
        whole.record(sample)
        (first if index % 2 else second).record(sample)
    first.merge(second)
    for fraction in (0.5, 0.9, 0.99, 1.0):
        assert first.percentile(fraction) == whole.percentile(fraction)
    exact_p90 = sorted(samples)[int(0.9 * len(samples)) - 1]
    assert abs(whole.percentile(0.9) - exact_p90) / exact_p90 < 0.01
    assert whole.max == 2.0 and whole.count == len(samples)


def test_loadgen_is_a_registered_command():
    assert "loadgen" in subprocess.run(
        [sys.executable, "-m", "fastmta", "--help"], cwd=REPO, capture_output=True, text=True,
        timeout=30, env={**os.environ, "COLUMNS": "200"}, check=False,
    ).stdout
