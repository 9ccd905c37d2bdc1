"""Where fastmta's server CPU goes per received message: threads, py-spy, perf.

    .venv/bin/python bench/profile_receive.py                       # CPU split only
    .venv/bin/python bench/profile_receive.py --tool py-spy --gil   # + Python stacks
    .venv/bin/python bench/profile_receive.py --tool perf           # + kernel/user by DSO
    .venv/bin/python bench/profile_receive.py --tool strace         # + syscalls per message
    .venv/bin/python bench/profile_receive.py --pipeline discard      # + delivery's share
    .venv/bin/python bench/profile_receive.py --load 100x1k/1 --fastmta-arg=--workers=0

Starts `fastmta serve` (spool in a temp dir, every message fsynced), drives it with
`fastmta loadgen` in its own process for `--seconds`, and reads the CPU of every
thread of the server (user and system time from /proc/<pid>/task/<tid>/stat), per
message.  Accept-only pipeline (the default, no delivery): over a window inside the
run (after a 1 s ramp), per message the spool gained.  Discard pipeline: over the
whole run and the drain after it, per message loadgen got a 250 for.  A receive
worker's main thread runs the event loop (transport, protocol, session, logging); its
other threads are the spool's group-commit thread and fsync pool; fastmta-deliver is
the delivery worker.  One tool at a time, over the same period:
- py-spy: each receive worker sampled (`py-spy record --format raw`, 100 Hz), samples
  attributed, leaf first, to the part of the code they are in.  Use --gil: without it
  py-spy counts threads blocked in a queue or in uvloop's epoll as running.
- perf: `perf record -g` over the server's processes: user space vs kernel by DSO,
  the top symbols, and the system calls by the share of samples under each.
- strace: `strace -c -f` over the server: system calls per message.
Tools slow the server down: read CPU per message from a run without one.  Before the
run, the CPU cost of creating a file next to the spool is printed: far above ~30 us
means the file system taxes every message (see bench/README.md, ext4 without journal).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from compare import DRAIN_TIMEOUT, LOADS, SETTLE, wait_drained  # bench/ is not a package
from compare_clients import RECIPIENT, SENDER, Load, run_loadgen
from compare_systems import PIPELINES, FastmtaServer, file_create_cost, free_ports
from proctree import CLOCK_TICKS, tree_pids

RAMP = 1.0  # seconds of the run before the window opens
# Leaf first, the first rule whose text is in a frame names the part of the code.
# py-spy writes frames as "function (package/path.py:line)"; C frames as "name (lib.so)".
BUCKETS = (
    ("logging", ("(logging/",)),
    ("metrics", ("(fastmta/metrics", "prometheus_client")),
    ("spool", ("(fastmta/spool/",)),
    ("kernels (Cython)", ("(fastmta/_ext", "(fastmta/_pure")),
    ("protocol", ("(fastmta/protocol/",)),
    ("policy", ("(fastmta/policy", "(fastmta/aliases")),
    ("threads, locks, futures", ("(threading.py", "(concurrent/", "(queue.py")),
    ("session (server/session.py)", ("(fastmta/server/",)),
    ("event loop (uvloop, asyncio)", ("uvloop", "(asyncio/")),
)


def thread_times(root_pid: int) -> dict[tuple[int, int], tuple[str, int, int]]:
    """(pid, tid) -> (process name, user ticks, system ticks) for the whole tree."""
    times = {}
    for pid in tree_pids(root_pid):
        try:
            tids = [int(entry.name) for entry in Path(f"/proc/{pid}/task").iterdir()
                    if entry.name.isdigit()]
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                text = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
            except FileNotFoundError:
                continue
            fields = text[text.rindex(b")") + 2:].split()
            times[(pid, tid)] = (name, int(fields[11]), int(fields[12]))
    return times


def cpu_split(before: dict, after: dict, messages: int) -> list[str]:  # type: ignore[type-arg]
    """Milliseconds of CPU per message by process role and thread kind, user/system."""
    rows: Counter[tuple[str, str, str]] = Counter()
    for key, (name, user, system) in after.items():
        old = before.get(key, (name, 0, 0))
        pid, tid = key
        kind = "main thread (event loop)" if pid == tid else "other threads"
        rows[(name, kind, "user")] += user - old[1]
        rows[(name, kind, "system")] += system - old[2]
    lines = [(f"server CPU per message over {messages} messages (ms; threads that ended "
              "inside the window are not counted):")]
    total = 0.0
    for (name, kind, mode), ticks in sorted(rows.items()):
        if ticks:
            ms = ticks / CLOCK_TICKS * 1000 / messages
            total += ms
            lines.append(f"  {name:18} {kind:38} {mode:6} {ms:6.3f}")
    lines.append(f"  {'total':18} {'':38} {'':6} {total:6.3f}")
    return lines


def bucket_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for bucket, needles in BUCKETS:
            if any(needle in frame for needle in needles):
                return bucket
    return "other"


def summarise_py_spy(raw: Path, top: int = 25) -> list[str]:
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        buckets[bucket_of(frames)] += count
        leaves[frames[-1]] += count
        for name in {frame.split(" (", 1)[0] for frame in frames
                     if "(fastmta/" in frame or "(logging/" in frame}:
            inclusive[name] += count
    if not total:
        return ["py-spy: no samples"]
    lines = [f"py-spy: {total} samples of running threads, by part of the code (leaf first):"]
    lines += [f"  {share / total:6.1%}  {bucket}" for bucket, share in buckets.most_common()]
    lines.append(f"top {top} fastmta and logging functions, with what they call:")
    lines += [f"  {share / total:6.1%}  {name}" for name, share in inclusive.most_common(top)]
    lines.append(f"top {top} leaf frames:")
    lines += [f"  {share / total:6.1%}  {frame}" for frame, share in leaves.most_common(top)]
    return lines


def _perf_report(data: Path, *options: str) -> list[str]:
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "-g", "none",
                             *options], capture_output=True, text=True, check=False)
    return [line.strip() for line in report.stdout.splitlines()
            if line.strip() and not line.startswith("#")]


def summarise_perf(data: Path) -> list[str]:
    lines = ["perf, self time by DSO:"]
    lines += ["  " + line for line in _perf_report(data, "--no-children", "--sort", "dso",
                                                   "--percent-limit", "0.5")[:12]]
    lines.append("perf, self time by symbol:")
    lines += ["  " + line for line in _perf_report(data, "--no-children", "--sort", "sym",
                                                   "--percent-limit", "0.5")[:30]]
    lines.append("perf, samples under each system call (children included):")
    lines += ["  " + line for line in _perf_report(data, "--children", "--sort", "sym",
                                                   "--percent-limit", "0.3")
              if "__x64_sys_" in line][:20]
    return lines


def summarise_strace(summary: Path, messages: int) -> list[str]:
    """strace -c's table as calls per message, busiest first."""
    rows = []
    for line in summary.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            calls = int(fields[3])
            errors = int(fields[4]) if len(fields) == 6 else 0
            rows.append((calls, fields[-1], errors))
    lines = [(f"strace -c: system calls per message ({messages} messages; strace slows "
              "everything, counts stay right):")]
    for calls, name, errors in sorted(rows, reverse=True):
        if calls / messages >= 0.01:
            lines.append(f"  {calls / messages:7.2f}  {name}"
                         + (f"  ({errors / messages:.2f} failed)" if errors else ""))
    lines.append(f"  {sum(calls for calls, _, _ in rows) / messages:7.2f}  in all")
    return lines


def start_tool(args: argparse.Namespace, pids: list[int], workers: list[int], window: float,
               out: Path) -> list[subprocess.Popen[bytes]]:
    def quiet(command: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    if args.tool == "py-spy":
        py_spy = str(Path(sys.executable).with_name("py-spy"))
        flags = (["--native"] if args.native else []) + (["--gil"] if args.gil else [])
        return [quiet([py_spy, "record", "--pid", str(pid), "--format", "raw", "--duration",
                       str(int(window)), "--output", str(out / f"py-spy-{pid}.txt"), *flags])
                for pid in workers]
    if args.tool == "perf":
        return [quiet(["perf", "record", "-F", "499", "-g", "-o", str(out / "perf.data"),
                       "-p", ",".join(map(str, pids)), "--", "sleep", str(window)])]
    if args.tool == "strace":
        command = ["strace", "-c", "-f", "-o", str(out / "strace.txt")]
        for pid in pids:
            command += ["-p", str(pid)]
        tracer = quiet(command)
        time.sleep(0.5)  # attached (a few messages fewer in the count is fine: it is per message)
        return [tracer]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/profile_receive.py", description=__doc__.split("\n")[0])
    parser.add_argument("--load", default="20x1k/1", help="CxSIZE/K as in compare.py [default: 20x1k/1]")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the run [default: 12]")
    parser.add_argument("--pipeline", choices=PIPELINES, default="accept-only",
                        help="accept-only: the receive path alone; discard: with delivery "
                             "(CPU until the queue is empty again) [default: accept-only]")
    parser.add_argument("--tool", choices=("none", "py-spy", "perf", "strace"), default="none",
                        help="profiler to run over the window [default: none]")
    parser.add_argument("--native", action="store_true", help="py-spy: native frames too")
    parser.add_argument("--gil", action="store_true", help="py-spy: only samples holding the GIL")
    parser.add_argument("--fastmta-arg", action="append", default=[], metavar="ARG",
                        help="extra flag for `fastmta serve` (repeatable)")
    parser.add_argument("--out", type=Path, help="keep py-spy/perf/strace output here "
                                                 "[default: a temp dir, printed]")
    args = parser.parse_args(argv)
    load = next((item for item in LOADS if item.name == args.load), None)
    if load is None:
        parser.error(f"--load: unknown {args.load!r}; one of {', '.join(item.name for item in LOADS)}")
    workdir = Path(tempfile.mkdtemp(prefix="fastmta-profile-"))
    out = args.out or workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]
    server = FastmtaServer(workdir / "fastmta", [port], args.pipeline, args.fastmta_arg)
    create_us = file_create_cost(workdir / "create-probe")
    try:
        server.start()
        run_loadgen(port, Load(load.connections, 1024, 1), messages=max(2 * load.connections, 20))
        if args.pipeline == "discard":
            wait_drained(server, DRAIN_TIMEOUT)
        pids = tree_pids(server.root_pid())
        workers = [pid for pid in pids if _comm(pid) == "fastmta-receive"] or pids
        report = ""
        if args.pipeline == "accept-only":
            # A window inside the run (after a ramp, before the end), counted by the spool.
            client = _start_loadgen(port, load, args.seconds)
            time.sleep(RAMP)
            window = args.seconds - RAMP - 1.0
            queued_at_tool_start = server.queued()
            samplers = start_tool(args, pids, workers, window, out)
            queued, before = server.queued(), thread_times(server.root_pid())
            time.sleep(window)
            messages, after = server.queued() - queued, thread_times(server.root_pid())
            _stop_tool(args, samplers)
            # strace counts from its attach to its detach: per message of that span.
            tool_messages = server.queued() - queued_at_tool_start
            report = client.communicate()[0]
        else:
            # The whole run and the drain after it, counted by loadgen's 250s.
            started = time.monotonic()
            samplers = start_tool(args, pids, workers, args.seconds, out)
            before = thread_times(server.root_pid())
            client = _start_loadgen(port, load, args.seconds)
            report = client.communicate()[0]
            wait_drained(server, DRAIN_TIMEOUT)
            time.sleep(SETTLE)
            after = thread_times(server.root_pid())
            _stop_tool(args, samplers)
            window = time.monotonic() - started
            messages = int(json.loads(report)["messages_accepted"]) if report else 0
            tool_messages = messages
    finally:
        server.stop()
        shutil.rmtree(workdir / "fastmta", ignore_errors=True)
    print(f"file creation next to the spool before the run: {create_us:.0f} us of CPU each")
    print(f"load {load.name}, pipeline {args.pipeline}: {messages} messages in {window:.1f} s "
          f"({messages / window:.0f} msg/s); server processes {len(pids)}"
          + (f"; {args.tool} running" if args.tool != "none" else ""))
    print("\n".join(cpu_split(before, after, max(messages, 1))))
    if args.tool == "py-spy":
        for pid in workers:
            print(f"\nreceive worker {pid}:")
            print("\n".join(summarise_py_spy(out / f"py-spy-{pid}.txt")))
    elif args.tool == "perf":
        print("\n" + "\n".join(summarise_perf(out / "perf.data")))
    elif args.tool == "strace":
        print("\n" + "\n".join(summarise_strace(out / "strace.txt", max(tool_messages, 1))))
    if args.tool != "none":
        print(f"\nraw output in {out}")
    # Keep only what a tool wrote, and only when it was written inside the work dir.
    if args.out is not None or args.tool == "none":
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        shutil.rmtree(workdir / "create-probe", ignore_errors=True)
    return 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _start_loadgen(port: int, load: Load, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastmta", "loadgen", f"127.0.0.1:{port}", "-c",
         str(load.connections), "-k", str(load.per_connection), "-s", str(load.message_size),
         "--duration", str(seconds), "--from", SENDER, "--to", RECIPIENT, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _stop_tool(args: argparse.Namespace, samplers: list[subprocess.Popen[bytes]]) -> None:
    for sampler in samplers:
        if args.tool == "strace":
            sampler.send_signal(signal.SIGINT)  # detach and write the summary
        sampler.wait()


if __name__ == "__main__":
    sys.exit(main())
