"""`fastmta loadgen` against Postfix's own `smtp-source`, both driving Postfix's `smtp-sink`.

A load generator must be faster than what it measures.  Here both clients send the
same load to `smtp-sink` (protocol only, no disk), one client after the other:
20000 messages of 1151 octets (the size smtp-source's `-l 1024` gives, headers
included) over 20 concurrent connections,
- one message per connection (smtp-source's default, loadgen `-k 1`), and
- all messages over the same 20 connections (smtp-source `-d`, loadgen `-k 1000`).
Each client gets a fresh sink per run, and the order of clients rotates each round.
The table printed (use -s) gives each client's median messages/s and every round's.
Results: bench/README.md.

    .venv/bin/python -m pytest bench/test_bench_loadgen.py --benchmark-enable -s

Skipped when smtp-sink/smtp-source are not installed (Debian: `apt-get install postfix`).
Without --benchmark-enable (the project default) each case runs once, as a smoke test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

import pytest

MESSAGES = 20000
CONNECTIONS = 20
SIZE = 1151
ROUNDS = 5  # of each client, interleaved

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
pytestmark = pytest.mark.skipif(
    not (os.access(SMTP_SINK, os.X_OK) and os.access(SMTP_SOURCE, os.X_OK)),
    reason="Postfix's smtp-sink and smtp-source are not installed (apt-get install postfix)",
)


def start_sink() -> tuple[tuple[subprocess.Popen[bytes], int], dict]:
    """A fresh smtp-sink on a fresh port: the setup of every round.

    Each round leaves ~20000 loopback connections in TIME_WAIT for 60 s.  Against the
    same port, the next round's connect() must search past them for a free 4-tuple, and
    whichever client runs later gets slower; a new destination port makes every 4-tuple
    new again, so each round starts from the same state.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses to run as root
    sink = subprocess.Popen([SMTP_SINK, *user, "-c", f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return (sink, port), {}
        except OSError:
            if time.monotonic() > deadline:
                sink.kill()
                raise
            time.sleep(0.05)


def stop_sink(sink: subprocess.Popen[bytes], port: int) -> None:
    sink.terminate()
    sink.wait(timeout=10)


def smtp_source(port: int, same_connection: bool) -> None:
    reuse = ["-d"] if same_connection else []
    subprocess.run([SMTP_SOURCE, *reuse, "-s", str(CONNECTIONS), "-m", str(MESSAGES), "-l", "1024",
                    "-f", "a@example.com", "-t", "u@example.test", f"127.0.0.1:{port}"],
                   check=True, timeout=600)


def loadgen(port: int, same_connection: bool, processes: int) -> dict:
    per_connection = MESSAGES // CONNECTIONS if same_connection else 1
    finished = subprocess.run(
        [sys.executable, "-m", "fastmta", "loadgen", f"127.0.0.1:{port}", "-c", str(CONNECTIONS),
         "-m", str(MESSAGES), "-s", str(SIZE), "-k", str(per_connection),
         "-P", str(processes), "--from", "a@example.com", "--to", "u@example.test", "--json"],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return json.loads(finished.stdout)


CLIENTS = ("smtp-source", "loadgen", "loadgen -P 2")


def send_with(client: str, port: int, same_connection: bool) -> dict | None:
    if client == "smtp-source":
        smtp_source(port, same_connection)
        return None
    return loadgen(port, same_connection, processes=2 if "-P 2" in client else 1)


@pytest.mark.parametrize("connection_use", ["new-connection-each", "same-connections"])
def test_loadgen_vs_smtp_source(benchmark, connection_use):
    """One benchmark round = every client once, each on a fresh sink, in an order that
    rotates from round to round, so a busy moment of a shared machine hits all alike."""
    same = connection_use == "same-connections"
    seconds: dict[str, list[float]] = {client: [] for client in CLIENTS}
    busiest_cpu: dict[str, float] = {}
    rounds_done = [0]

    def one_round() -> None:
        shift = rounds_done[0] % len(CLIENTS)
        for client in CLIENTS[shift:] + CLIENTS[:shift]:
            (sink, port), _ = start_sink()
            try:
                started = time.perf_counter()
                report = send_with(client, port, same)
                seconds[client].append(time.perf_counter() - started)
            finally:
                stop_sink(sink, port)
            if report is not None:
                assert report["all_accepted"], report
                busiest_cpu[client] = max(busiest_cpu.get(client, 0.0),
                                          report["cpu_share_busiest_process"])
        rounds_done[0] += 1

    benchmark.pedantic(one_round, rounds=ROUNDS)
    print(f"\n{connection_use}: {MESSAGES} x {SIZE} octets, {CONNECTIONS} connections, "
          f"{rounds_done[0]} rounds")
    for client, times in seconds.items():
        rate = MESSAGES / statistics.median(times)
        benchmark.extra_info[f"{client} msg/s"] = round(rate)
        cpu = f", busiest process at {busiest_cpu[client]:.0%} CPU" if client in busiest_cpu \
            else ""
        print(f"  {client:14} median {rate:7.0f} msg/s  (rounds: "
              f"{', '.join(f'{MESSAGES / t:.0f}' for t in times)}){cpu}")
