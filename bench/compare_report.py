"""The results of bench/compare.py: one `Row` per measured run, the ratio of fastmta to
Postfix per (client, load), the machine description, and the printed table.

Ratios: "msgs/s x" is fastmta's rate over Postfix's (above 1: fastmta faster), "CPU x"
is fastmta's server CPU per message over Postfix's (below 1: fastmta cheaper).  The
target of issue 6 is checked on the loadgen and smtp-source rows alike: at least 2x
the rate at 20 and 100 connections with 1 KiB messages, and not slower anywhere.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Row", "machine_details", "render_table", "target_verdict", "with_ratios"]

TARGET_RATIO = 2.0
# Creating an empty file costs ~30 us of CPU on a healthy ext4; far more means the
# file system's state (ext4 without a journal after mass deletions) taxes every
# message of both servers, squeezing the ratio towards 1 (bench/README.md).
SLOW_CREATE_US = 150.0
TARGET_CONNECTIONS = (20, 100)


@dataclass
class Row:
    system: str
    client: str
    load: str
    connections: int
    payload: int
    per_connection: int
    messages: int = 0  # that got their 250
    seconds: float = 0.0
    p99_ms: float | None = None
    server_cpu_s: float = 0.0  # whole process tree, run start to queue drained
    drain_s: float | None = None  # after the client finished, until the queue was empty
    server_count: int | None = None  # messages the server queued (accept-only pairing)
    create_us: float | None = None  # CPU to create a file next to the spools, just before
    ok: bool = False
    client_cpu_bound: bool = False
    problem: str | None = None
    rate_ratio: float | None = None
    cpu_ratio: float | None = None
    round_rates: list[float] | None = None  # msgs/s of every round, with --rounds > 1

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_1000(self) -> float | None:
        return self.server_cpu_s * 1000 / self.messages if self.messages else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages_per_s"] = round(self.rate, 1)
        data["cpu_s_per_1000"] = None if self.cpu_per_1000 is None else round(self.cpu_per_1000, 3)
        return data


def median_rows(rows: list[Row]) -> list[Row]:
    """One row per (system, client, load): the round with the median msgs/s (of an
    even count, the slower middle one), carrying every round's rate.  A failed round
    makes the result failed."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.system, row.client, row.load), []).append(row)
    result = []
    for group in groups.values():
        if len(group) == 1:
            result.append(group[0])
            continue
        failed = [row for row in group if not row.ok]
        chosen = failed[0] if failed else sorted(group, key=lambda row: row.rate)[(len(group) - 1) // 2]
        chosen.round_rates = [round(row.rate, 1) for row in group]
        result.append(chosen)
    return result


def with_ratios(rows: list[Row]) -> list[Row]:
    """Fill rate_ratio and cpu_ratio on each fastmta row that has a Postfix twin."""
    postfix = {(row.client, row.load): row for row in rows if row.system == "postfix" and row.ok}
    for row in rows:
        twin = postfix.get((row.client, row.load))
        if row.system != "fastmta" or twin is None or not row.ok:
            continue
        if twin.rate > 0:
            row.rate_ratio = row.rate / twin.rate
        if row.cpu_per_1000 is not None and twin.cpu_per_1000:
            row.cpu_ratio = row.cpu_per_1000 / twin.cpu_per_1000
    return rows


def target_verdict(rows: list[Row]) -> list[str]:
    """One line per miss of the target (empty: met, or nothing to compare)."""
    misses = []
    for row in rows:
        if row.rate_ratio is None:
            continue
        needs_double = row.payload == 1024 and row.connections in TARGET_CONNECTIONS
        wanted = TARGET_RATIO if needs_double else 1.0
        if row.rate_ratio < wanted:
            misses.append(f"{row.client} {row.load}: fastmta at {row.rate_ratio:.2f}x Postfix's "
                          f"rate, target {wanted:g}x")
    return misses


def _cell(value: float | None, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def render_table(rows: list[Row]) -> str:
    lines = [("| system | client | load | msgs/s | p99 ms | server CPU s / 1000 msgs "
             "| msgs/s x | CPU x | notes |"),
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        notes = []
        if row.problem:
            notes.append(f"FAILED: {row.problem}")
        if row.client_cpu_bound:
            notes.append("client CPU-bound")
        if row.create_us is not None and row.create_us > SLOW_CREATE_US:
            notes.append(f"slow file creation: {row.create_us:.0f} us")
        if row.drain_s is not None and row.drain_s >= 0.5:
            notes.append(f"queue drained {row.drain_s:.1f} s after")
        if row.round_rates:
            notes.append("rounds " + "/".join(f"{rate:.0f}" for rate in row.round_rates))
        lines.append(
            f"| {row.system} | {row.client} | {row.load} | {row.rate:.0f} | {_cell(row.p99_ms, 1)} "
            f"| {_cell(row.cpu_per_1000, 2)} | {_cell(row.rate_ratio, 2, 'x')} "
            f"| {_cell(row.cpu_ratio, 2, 'x')} | {'; '.join(notes)} |")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _filesystem(path: Path) -> str:
    """The type and device of the mount holding `path` (longest mount point prefix)."""
    best = ("", "unknown", "")
    target = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in mounts:
        device, mount_point, fs_type = line.split()[:3]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[0]):
            best = (mount_point, fs_type, device)
    fs_type, device = best[1], best[2]
    if fs_type == "ext4":
        # No journal: fsync writes the inode itself and every allocation skips recently
        # freed inodes; both change what a message costs.
        journal = Path(f"/sys/fs/ext4/{os.path.basename(device)}/journal_task")
        if journal.exists() and journal.read_text().strip() == "<none>":
            return f"ext4 without a journal on {device}"
    return f"{fs_type} on {device}"


def machine_details(workdir: Path, postfix_version: str) -> dict[str, str]:
    import uvloop

    from fastmta import __version__, kernels

    hypervisor = subprocess.run(["systemd-detect-virt"], check=False, capture_output=True, text=True) \
        if os.path.exists("/usr/bin/systemd-detect-virt") else None
    return {
        "cpu": f"{_cpu_model()}, {os.cpu_count()} logical CPUs"
               + (f" ({hypervisor.stdout.strip()})" if hypervisor and hypervisor.stdout.strip()
                  and hypervisor.stdout.strip() != "none" else ""),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "kernel": platform.release(),
        "spool filesystem": _filesystem(workdir),
        "python": sys.version.split()[0],
        "uvloop": uvloop.__version__,
        "fastmta": f"{__version__} (kernels: {kernels.BACKEND})",
        "postfix": postfix_version,
    }
