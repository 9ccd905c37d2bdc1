"""Smoke tests of bench/compare.py's plumbing: tiny loads against a real `fastmta serve`.

The comparison itself (long runs against Postfix) is bench/compare.py's job; here
we check, with real processes and sockets, that the parts it rests on tell the
truth: CPU is counted over a whole process tree including children that already
exited, every run checks each message got its 250 and that the server's queue
gained exactly those messages, and the fsync check sees the spool's fsyncs.
Postfix is driven only by the test marked `peer` (skipped when Postfix is not
installed or we are not root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from compare_clients import smtp_source_path
from durability import strace_path
from postfix.instance import postfix_unavailable
from proctree import tree_cpu_seconds, tree_pids


def run_compare(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / "compare.py"), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_tree_cpu_includes_children_that_already_exited():
    # A parent forks a child that, when told, burns 0.4 s of CPU and exits; the
    # parent reaps it and stays.
    script = textwrap.dedent("""
        import os, sys, time
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            os.read(read_end, 1)
            end = time.process_time() + 0.4
            while time.process_time() < end:
                pass
            os._exit(0)
        print(child, flush=True)
        sys.stdin.readline()
        os.write(write_end, b"x")
        os.waitpid(child, 0)
        print("reaped", flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdin is not None and parent.stdout is not None
        child = int(parent.stdout.readline())
        assert tree_pids(parent.pid) == [parent.pid, child]
        before = tree_cpu_seconds(parent.pid)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == "reaped\n"
        after = tree_cpu_seconds(parent.pid)
        assert tree_pids(parent.pid) == [parent.pid]  # the child is gone...
        assert after - before >= 0.3  # ...and its CPU still counts
    finally:
        parent.kill()
        parent.wait()
    with pytest.raises(ProcessLookupError, match="is gone"):
        tree_cpu_seconds(parent.pid)


def test_fastmta_runs_are_counted_and_checked(tmp_path):
    started = time.monotonic()
    finished = run_compare("--systems", "fastmta", "--loads", "20x1k/1,1x100k/10",
                           "--seconds", "0.3", "--pipeline", "accept-only", "--json",
                           "--workdir", str(tmp_path / "work"))
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout)
    assert result["pipeline"] == "accept-only"
    clients = ["loadgen"] + (["smtp-source"] if smtp_source_path() else [])
    rows = result["rows"]
    assert [(row["load"], row["client"]) for row in rows] == [
        (load, client) for load in ("1x100k/10", "20x1k/1") for client in clients]  # table order
    for row in rows:
        assert row["system"] == "fastmta"
        assert row["ok"], row
        assert row["messages"] > 0
        assert row["server_count"] == row["messages"]  # the spool gained exactly those
        assert row["messages_per_s"] > 0
        assert row["cpu_s_per_1000"] > 0
        assert (row["p99_ms"] is not None) == (row["client"] == "loadgen")
        if row["client"] == "smtp-source":
            assert row["messages"] % (row["connections"] * row["per_connection"]) == 0
    if strace_path():
        (check,) = result["durability"]
        assert check["ok"] and check["file_fsyncs"] >= check["accepted"] == check["messages"]
    assert result["target_misses"] is None  # nothing to compare with
    assert not (tmp_path / "work").exists()  # removed without --keep
    assert time.monotonic() - started < 30


def test_table_names_each_run_and_the_machine(tmp_path):
    finished = run_compare("--systems", "fastmta", "--clients", "loadgen", "--loads", "1x1k/1",
                           "--seconds", "0.3", "--pipeline", "accept-only", "--no-verify",
                           "--keep", "--workdir", str(tmp_path / "work"))
    assert finished.returncode == 0, finished.stderr
    table = [line for line in finished.stdout.splitlines() if line.startswith("| fastmta")]
    assert len(table) == 1 and "| loadgen | 1x1k/1 |" in table[0]
    assert "kernels: cython" in finished.stdout or "kernels: python" in finished.stdout
    assert "load average" in finished.stdout
    log = (tmp_path / "work" / "fastmta" / "fastmta.log").read_text()
    assert "accepted" in log  # --keep leaves the server's log for inspection


def test_discard_pipeline_waits_for_the_queue_to_drain(tmp_path):
    # fastmta's delivery takes each message and discards it; the run's CPU and the
    # drain time cover that too, and the spool ends empty.
    finished = run_compare("--systems", "fastmta", "--clients", "loadgen", "--loads", "20x1k/10",
                           "--seconds", "0.3", "--pipeline", "discard", "--no-verify", "--json",
                           "--keep", "--workdir", str(tmp_path / "work"))
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout)
    (row,) = result["rows"]
    assert result["pipeline"] == "discard" and row["ok"], row
    assert row["drain_s"] is not None and row["server_count"] is None
    spool = tmp_path / "work" / "fastmta" / "spool"
    assert all(not list((spool / queue).iterdir()) for queue in ("incoming", "active", "deferred"))


def test_a_load_pattern_matching_nothing_is_refused():
    finished = run_compare("--loads", "7x3k/2")
    assert finished.returncode == 2
    assert "matches no load" in finished.stderr and "20x1k/1" not in finished.stdout


@pytest.mark.peer
@pytest.mark.skipif(postfix_unavailable() is not None, reason=str(postfix_unavailable()))
def test_postfix_and_fastmta_side_by_side(tmp_path):
    finished = run_compare("--loads", "20x1k/1", "--clients", "loadgen", "--seconds", "0.3",
                           "--pipeline", "accept-only", "--no-verify", "--json",
                           "--workdir", str(tmp_path / "work"))
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout)
    rows = {row["system"]: row for row in result["rows"]}
    assert set(rows) == {"fastmta", "postfix"}
    assert all(row["ok"] and row["server_count"] == row["messages"] for row in rows.values())
    fastmta, postfix = rows["fastmta"], rows["postfix"]
    assert fastmta["rate_ratio"] == pytest.approx(
        fastmta["messages_per_s"] / postfix["messages_per_s"], rel=0.01)
    assert postfix["rate_ratio"] is None
    assert isinstance(result["target_misses"], list)
    # Postfix was stopped: no master of ours is left.
    pid_file = tmp_path / "work" / "postfix" / "spool" / "pid" / "master.pid"
    assert not pid_file.exists() or not os.path.exists(f"/proc/{pid_file.read_text().strip()}")
