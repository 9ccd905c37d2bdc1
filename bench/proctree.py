"""CPU time of a server's whole process tree, read from /proc (Linux only).

`tree_cpu_seconds(root_pid)` is the user + system time spent so far by `root_pid`
and every process below it, including descendants that have already exited.

How exited processes stay counted: proc(5) gives each process its own utime and
stime (fields 14, 15; all its threads included) and cutime and cstime (fields 16,
17): the times of the children it has waited for, themselves including their
waited-for descendants.  So summing all four fields over the live processes of the
tree counts every process exactly once, live or reaped.  This holds for servers
that reap their children (Postfix's master, fastmta's master both do); a zombie
still has its own /proc entry and is counted there until it is reaped.

A run's CPU is the difference of two readings.  Readings are in clock ticks
(usually 10 ms), so short runs of many processes carry a rounding error of about
one tick per process that ran: runs should last seconds, not milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["process_stat", "tree_cpu_seconds", "tree_pids"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, own ticks, waited-for children's ticks) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ")":
    # the fields after it start after the last ")".
    fields = text[text.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ppid, utime + stime, cutime + cstime


def _all_processes() -> Iterator[tuple[int, tuple[int, int, int]]]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = process_stat(int(name))
            if stat is not None:
                yield int(name), stat


def tree_pids(root_pid: int) -> list[int]:
    """`root_pid` and its live descendants (root first); empty if the root is gone."""
    return [pid for pid, _ in _tree(root_pid)]


def _tree(root_pid: int) -> list[tuple[int, tuple[int, int, int]]]:
    stats = dict(_all_processes())
    if root_pid not in stats:
        return []
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found = []
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        found.append((pid, stats[pid]))
        pending.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system seconds of the tree under `root_pid`, reaped descendants included.

    Raises ProcessLookupError when the root is gone (the server died: the run is void)."""
    tree = _tree(root_pid)
    if not tree:
        raise ProcessLookupError(f"process {root_pid} is gone; see the server's log")
    ticks = sum(own + reaped for _, (_, own, reaped) in tree)
    return ticks / CLOCK_TICKS
