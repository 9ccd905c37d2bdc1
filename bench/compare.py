"""fastmta against Postfix, side by side, same loads, same durability: one command.

    TMPDIR=/var/tmp .venv/bin/python bench/compare.py     # the full table (about 6 minutes)
    .venv/bin/python bench/compare.py --quick             # 4 loads, shorter runs
    .venv/bin/python bench/compare.py --loads '20x1k/*' --clients loadgen --json

Postfix takes root (its master starts as root); without it, or without Postfix
installed, fastmta runs alone.  Put the work dir (TMPDIR or --workdir) on a file
system other jobs do not churn: see bench/README.md on ext4 without a journal.

What it does (details and results in bench/README.md, "Comparison with Postfix"):
1. Starts `fastmta serve` (default worker count, spool in a temp dir) and a private
   Postfix (bench/postfix/, same temp dir), each listening on one fresh loopback
   port per measured run plus one for checks.
2. Picks the pipeline both run (`--pipeline auto`): "discard" if fastmta's delivery
   empties its queue (both then queue, fsync, dequeue and discard), otherwise
   "accept-only" (both queue and fsync, and nothing leaves the queue).
3. Checks with strace that each server fsyncs every accepted message (`--no-verify`
   skips it).
4. For each load (C connections x payload / K messages per connection), each client
   (fastmta's loadgen, Postfix's smtp-source) and each system (order alternating
   between loads): a warm-up, then a measured run; the server's CPU is read over its
   whole process tree from before the run until its queue is drained again.
5. Prints one table (or --json) and exits 1 if any message did not get its 250.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare_clients import (
    ClientResult,
    Load,
    run_loadgen,
    run_smtp_source,
    smtp_source_count,
    smtp_source_path,
)
from compare_report import (
    Row,
    machine_details,
    median_rows,
    render_table,
    target_verdict,
    with_ratios,
)
from compare_systems import (
    PIPELINES,
    FastmtaServer,
    SystemUnderTest,
    file_create_cost,
    free_ports,
)
from durability import FsyncCheck, check_fsyncs, strace_path
from postfix.instance import PostfixInstance, postfix_unavailable, postfix_version
from proctree import tree_cpu_seconds

LOADS = tuple(Load(connections, payload, per_connection)
              for connections in (1, 20, 100)
              for payload in (1024, 100 * 1024)
              for per_connection in (1, 10))
QUICK_LOADS = ("20x1k/1", "100x1k/1", "100x1k/10", "20x100k/1")
CLIENTS = ("loadgen", "smtp-source")
SYSTEMS = ("fastmta", "postfix")
DEFAULT_SECONDS = 4.0
QUICK_SECONDS = 2.0
DRAIN_TIMEOUT = 120.0  # seconds a queue may take to empty after a run (discard pipeline)
PROBE_TIMEOUT = 10.0  # seconds fastmta's delivery gets to empty the queue when probed
SETTLE = 0.3  # seconds after a run before the CPU reading: disconnect logging and the like


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/compare.py",
        description="Measure fastmta against Postfix with the same loads and durability.")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {', '.join(QUICK_LOADS)}, {QUICK_SECONDS:g} s each")
    parser.add_argument("--loads", metavar="PATTERNS",
                        help="comma-separated patterns of load names CxSIZE/K, e.g. "
                             "'20x1k/*,100x*/10' (all: " + ", ".join(load.name for load in LOADS) + ")")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help="comma-separated: loadgen, smtp-source [default: both]")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated: fastmta, postfix [default: both]")
    parser.add_argument("--seconds", type=float,
                        help=f"length of each measured run [default: {DEFAULT_SECONDS:g}, "
                             f"--quick {QUICK_SECONDS:g}]")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run everything this many times, interleaved; the table shows "
                             "each run's median by msgs/s [default: 1]")
    parser.add_argument("--pipeline", choices=("auto", *PIPELINES), default="auto",
                        help="what both servers do with a queued message [default: auto: "
                             "discard if fastmta delivers, else accept-only]")
    parser.add_argument("--fastmta-arg", action="append", default=[], metavar="ARG",
                        help="extra flag for `fastmta serve` (repeatable; use "
                             "--fastmta-arg=--workers=4)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the strace check that every accepted message is fsynced")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--workdir", type=Path,
                        help="where the spools and logs go [default: a new temp dir]")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work dir (logs, spools) instead of removing it")
    args = parser.parse_args(argv)
    args.client_list = _choose(parser, "--clients", args.clients, CLIENTS)
    args.system_list = _choose(parser, "--systems", args.systems, SYSTEMS)
    patterns = args.loads.split(",") if args.loads else (QUICK_LOADS if args.quick else ["*"])
    args.load_list = [load for load in LOADS
                      if any(fnmatch.fnmatchcase(load.name, pattern.strip()) for pattern in patterns)]
    if not args.load_list:
        parser.error(f"--loads {args.loads!r} matches no load; names look like "
                     + ", ".join(load.name for load in LOADS[:3]))
    if args.seconds is None:
        args.seconds = QUICK_SECONDS if args.quick else DEFAULT_SECONDS
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def _choose(parser: argparse.ArgumentParser, flag: str, text: str, known: tuple[str, ...]
            ) -> list[str]:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown or not chosen:
        parser.error(f"{flag}: expected some of {', '.join(known)}, got {text!r}")
    return [item for item in known if item in chosen]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- one measured run ---------------------------------------------------------------------


def wait_drained(system: SystemUnderTest, timeout: float) -> float:
    """Seconds until the system's queue is empty; RuntimeError after `timeout`."""
    started = time.monotonic()
    while system.queued():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{system.name}'s queue still holds {system.queued()} messages "
                               f"{timeout:g} s after the run; see {system.log_path}")
        time.sleep(0.02)
    return time.monotonic() - started


def make_idle(system: SystemUnderTest, pipeline: str) -> None:
    """Before a run: the queue drained by delivery ("discard").  In "accept-only" the
    queue keeps growing and runs count what it gained: deleting thousands of files
    between runs would slow the next run's file creations (see file_create_cost)."""
    if pipeline == "discard":
        wait_drained(system, DRAIN_TIMEOUT)


def measure(system: SystemUnderTest, client: str, load: Load, port: int, seconds: float,
            pipeline: str, source_rate: float | None, probe_dir: Path) -> Row:
    """Warm up, then one measured run of `client` against `system` on `port`.

    `source_rate` sizes an smtp-source run (it takes a count, not a duration): the
    best loadgen rate of this load, or else the warm-up's rate."""
    row = Row(system.name, client, load.name, load.connections, load.payload, load.per_connection)
    # Warm-up on the run's own port: Postfix spawns up to C smtpd for it, as it would
    # have them running under steady load; small messages, one per connection.
    warm = run_loadgen(port, Load(load.connections, 1024, 1),
                       messages=max(2 * load.connections, 20))
    if not warm.all_accepted:
        row.problem = f"warm-up: {warm.problem}"
        return row
    make_idle(system, pipeline)
    row.create_us = file_create_cost(probe_dir)
    queued_before = system.queued()
    root = system.root_pid()
    cpu_before = tree_cpu_seconds(root)
    result: ClientResult
    if client == "loadgen":
        result = run_loadgen(port, load, seconds=seconds)
    else:
        result = run_smtp_source(port, load, smtp_source_count(load, source_rate or warm.rate,
                                                               seconds))
    if pipeline == "discard":
        row.drain_s = wait_drained(system, DRAIN_TIMEOUT)
    time.sleep(SETTLE)
    row.server_cpu_s = tree_cpu_seconds(root) - cpu_before
    row.messages, row.seconds, row.p99_ms = result.messages, result.seconds, result.p99_ms
    row.client_cpu_bound = result.client_cpu_bound
    row.ok, row.problem = result.all_accepted, result.problem
    if pipeline == "accept-only":
        row.server_count = system.queued() - queued_before
        if row.ok and row.server_count != row.messages:
            row.ok = False
            row.problem = (f"the client counted {row.messages} messages with a 250, the "
                           f"server's queue gained {row.server_count}")
    return row


# --- the whole comparison -------------------------------------------------------------------


@dataclass
class Comparison:
    """Everything printed: the rows, and what they were measured on."""

    pipeline: str = ""
    servers: dict[str, str] = field(default_factory=dict)
    durability: list[FsyncCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    load_average: dict[str, list[float]] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(not row.ok for row in self.rows) or any(not c.ok for c in self.durability)

    def to_dict(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "command": " ".join(["bench/compare.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": self.machine,
            "load_average": self.load_average,
            "pipeline": self.pipeline,
            "servers": self.servers,
            "seconds_per_run": args.seconds,
            "durability": [asdict(check) for check in self.durability],
            "notes": self.notes,
            "rows": [row.to_dict() for row in self.rows],
            "target_misses": target_verdict(self.rows) if len(self.servers) == 2 else None,
        }


def choose_pipeline(fastmta: FastmtaServer, probe_port: int) -> str:
    """"discard" if fastmta's delivery empties its queue within PROBE_TIMEOUT, else
    "accept-only" (fastmta is restarted without delivery workers)."""
    probe = run_loadgen(probe_port, Load(2, 1024, 1), messages=10)
    if not probe.all_accepted:
        raise RuntimeError(f"fastmta does not accept mail: {probe.problem}; see {fastmta.log_path}")
    try:
        wait_drained(fastmta, PROBE_TIMEOUT)
        return "discard"
    except RuntimeError:
        say(f"fastmta's delivery did not empty its queue within {PROBE_TIMEOUT:g} s: comparing "
            "the accept-only pipeline (both servers queue durably, nothing is delivered)")
        fastmta.stop()
        fastmta.pipeline = "accept-only"
        fastmta.start()
        return "accept-only"


def available(args: argparse.Namespace, notes: list[str]) -> tuple[list[str], list[str]]:
    """The clients and systems asked for that this machine can run (notes say why not)."""
    clients = list(args.client_list)
    if "smtp-source" in clients and smtp_source_path() is None:
        clients.remove("smtp-source")
        notes.append("smtp-source is not installed (apt-get install postfix): loadgen only")
    systems = list(args.system_list)
    if "postfix" in systems and (reason := postfix_unavailable()) is not None:
        systems.remove("postfix")
        notes.append(f"Postfix skipped: {reason}")
    if not args.no_verify and strace_path() is None:
        notes.append("durability not checked at run time: strace is not installed")
    if not clients or not systems:
        raise RuntimeError("nothing left to run: " + "; ".join(notes))
    return clients, systems


def run(args: argparse.Namespace, workdir: Path, started: list[SystemUnderTest]) -> Comparison:
    comparison = Comparison()
    clients, systems = available(args, comparison.notes)
    for note in comparison.notes:
        say(note)
    runs = [(round_, load, client) for round_ in range(args.rounds)
            for load in args.load_list for client in clients]
    # One call for every system: ports picked in separate calls can repeat (each call frees
    # its probes), and then Postfix cannot bind a port fastmta already holds.
    picked = free_ports((len(runs) + 1) * len(systems))
    ports = {name: picked[index::len(systems)] for index, name in enumerate(systems)}  # [0]: checks
    port_of = {name: dict(zip(runs, ports[name][1:])) for name in systems}

    servers: dict[str, SystemUnderTest] = {}
    pipeline = args.pipeline
    if "fastmta" in systems:
        fastmta = FastmtaServer(workdir / "fastmta", ports["fastmta"],
                                "accept-only" if pipeline == "accept-only" else "discard",
                                args.fastmta_arg)
        started.append(fastmta)
        say(f"starting {fastmta.describe()}")
        fastmta.start()
        if pipeline == "auto":
            pipeline = choose_pipeline(fastmta, ports["fastmta"][0])
        servers["fastmta"] = fastmta
    if pipeline == "auto":
        pipeline = "discard"
    if "postfix" in systems:
        postfix = PostfixInstance(workdir, ports["postfix"], pipeline)
        started.append(postfix)  # from here on, stopped and removed whatever happens
        say(f"starting Postfix in {postfix.root}")
        postfix.setup()
        postfix.start()
        servers["postfix"] = postfix
    comparison.pipeline = pipeline
    comparison.servers = {name: server.describe() for name, server in servers.items()}

    if not args.no_verify and strace_path() is not None:
        for name, server in servers.items():
            check = check_fsyncs(server, ports[name][0], workdir)
            say("durability: " + check.describe())
            comparison.durability.append(check)
            make_idle(server, pipeline)

    before = os.getloadavg()
    total = len(runs) * len(servers)
    every_run: list[Row] = []
    for round_, load, client in runs:
        # Which system goes first alternates from load to load and round to round, so a
        # busy moment of a shared machine does not always hit the same one.
        flip = (args.load_list.index(load) + round_) % 2
        order = list(servers)[::-1] if flip else list(servers)
        loadgen_rates = [row.rate for row in every_run
                         if row.load == load.name and row.client == "loadgen" and row.ok]
        for name in order:
            row = measure(servers[name], client, load, port_of[name][(round_, load, client)],
                          args.seconds, pipeline, max(loadgen_rates, default=0.0) or None,
                          workdir / "create-probe")
            every_run.append(row)
            say(f"[{len(every_run)}/{total}] {name} {client} {load.name}: {row.rate:.0f} msg/s"
                + (f", p99 {row.p99_ms:.1f} ms" if row.p99_ms is not None else "")
                + (f", {row.cpu_per_1000:.2f} CPU s/1000" if row.cpu_per_1000 else "")
                + ("" if row.ok else f"  FAILED: {row.problem}"))
    comparison.load_average = {"before": [round(x, 2) for x in before],
                               "after": [round(x, 2) for x in os.getloadavg()]}
    comparison.rows = with_ratios(median_rows(every_run))
    comparison.machine = machine_details(
        workdir, postfix_version() if "postfix" in servers else "not measured")
    return comparison


def print_report(comparison: Comparison, args: argparse.Namespace) -> None:
    data = comparison.to_dict(args)
    print(f"fastmta vs Postfix: pipeline {data['pipeline']}, {args.seconds:g} s per run, "
          f"{data['date']}")
    for key, value in data["machine"].items():
        print(f"  {key}: {value}")
    print(f"  load average (1/5/15 min) before: {data['load_average']['before']}, "
          f"after: {data['load_average']['after']}")
    for name, text in data["servers"].items():
        print(f"  {name}: {text}")
    for check in comparison.durability:
        print(f"  durability: {check.describe()}")
    for note in data["notes"]:
        print(f"  note: {note}")
    print()
    print(render_table(comparison.rows))
    misses = data["target_misses"]
    if misses is not None:
        print()
        print("target (>= 2x Postfix's msgs/s at 20 and 100 connections with 1 KiB, not slower "
              "anywhere): " + ("met" if not misses else "MISSED: " + "; ".join(misses)))


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # the servers are stopped and removed on the way out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)  # e.g. from `timeout`: no Postfix left running
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="fastmta-compare-"))
        workdir.chmod(0o755)  # Postfix's daemons (user postfix) work in here too
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    started: list[SystemUnderTest] = []
    try:
        comparison = run(args, workdir, started)
    except (RuntimeError, ProcessLookupError, subprocess.TimeoutExpired) as exc:
        say(f"bench/compare.py: {exc}; nothing measured is printed (--keep keeps the logs)")
        return 1
    finally:
        for server in reversed(started):
            server.stop()
        if args.keep:
            say(f"logs and spools kept in {workdir}"
                + "".join(f" and {server.log_path.parent}" for server in started
                          if not server.log_path.is_relative_to(workdir)))
        else:
            for server in started:
                server.remove()
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(comparison.to_dict(args), indent=2))
    else:
        print_report(comparison, args)
    return 1 if comparison.failed else 0


if __name__ == "__main__":
    sys.exit(main())
