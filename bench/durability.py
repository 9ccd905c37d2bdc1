"""Check at run time that a server really fsyncs each message before answering 250.

`check_fsyncs(system, port, messages)` attaches strace(1) to every process (and
thread, `-f`) of the server's tree, sends `messages` messages with loadgen, and
counts the successful fsync/fdatasync calls by target (`-y` prints each
descriptor's path): on files being received (each system says where those are),
and on the directories that make renames durable.  The check passes when received
files got at least one fsync per accepted message.
It says nothing about order (the code and the spool's crash tests cover "fsync
before 250"); what it catches is a configuration in which nothing is synced at all.

strace slows the server down, so this runs once, before the measured runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from compare_clients import Load, run_loadgen
from compare_systems import SystemUnderTest
from proctree import tree_pids

__all__ = ["FsyncCheck", "check_fsyncs", "strace_path"]

ATTACH_TIMEOUT = 10.0
# "1234  fsync(7</tmp/x/spool/tmp/ID>) = 0", or with -f split into "... <unfinished ...>"
# and "<... fsync resumed>) = 0" when another thread runs meanwhile: calls are counted
# on the line naming the path.  (A failed fsync of a queue file makes the server
# answer 4xx, which the loadgen run reports, so failures need no count of their own.)
_CALL = re.compile(rb"^(\d+)\s+(?:fsync|fdatasync)\(\d+<([^>]*)>\)?(.*)$")


@dataclass
class FsyncCheck:
    system: str
    messages: int
    accepted: int
    file_fsyncs: int
    directory_fsyncs: int
    ok: bool
    note: str

    def describe(self) -> str:
        return (f"{self.system}: {self.accepted}/{self.messages} messages accepted under strace, "
                f"{self.file_fsyncs} fsyncs of files being received, {self.directory_fsyncs} of "
                f"queue directories: {self.note}")


def strace_path() -> str | None:
    return shutil.which("strace")


def check_fsyncs(system: SystemUnderTest, port: int, workdir: Path, messages: int = 40) -> FsyncCheck:
    strace = strace_path()
    if strace is None:
        raise RuntimeError("strace is not installed; install it (apt-get install strace) or "
                           "pass --no-verify")
    pids = tree_pids(system.root_pid())
    output = workdir / f"strace-{system.name}.txt"
    command = [strace, "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(output)]
    for pid in pids:
        command += ["-p", str(pid)]
    tracer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        _wait_until_traced(pids, tracer)
        result = run_loadgen(port, Load(connections=4, payload=1024, per_connection=1),
                             messages=messages)
        time.sleep(0.3)  # commits finishing after the last 250 belong to the count too
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches and writes out what it has
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    file_prefix, directories = system.fsync_paths()
    file_fsyncs, directory_fsyncs = _count(output.read_bytes(), file_prefix, directories)
    ok = result.all_accepted and file_fsyncs >= result.messages
    if ok:
        note = "every accepted message's file was fsynced"
    elif not result.all_accepted:
        note = f"not every message was accepted ({result.problem})"
    else:
        note = "FEWER fsyncs of received files than messages: acceptance is not durable"
    return FsyncCheck(system.name, messages, result.messages, file_fsyncs, directory_fsyncs,
                      ok, note)


def _wait_until_traced(pids: list[int], tracer: subprocess.Popen[bytes]) -> None:
    """Until every pid (all threads are attached with it) has strace as its tracer."""
    deadline = time.monotonic() + ATTACH_TIMEOUT
    waiting = set(pids)
    while waiting:
        if tracer.poll() is not None:
            error = tracer.stderr.read().decode(errors="replace") if tracer.stderr else ""
            raise RuntimeError(f"strace could not attach: {error.strip()}")
        for pid in list(waiting):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                waiting.discard(pid)  # exited meanwhile (a daemon done with its work)
                continue
            tracer_line = next(line for line in status.splitlines() if line.startswith("TracerPid"))
            if tracer_line.split()[1] != "0":
                waiting.discard(pid)
        if time.monotonic() > deadline:
            raise RuntimeError(f"strace did not attach to {sorted(waiting)} within "
                               f"{ATTACH_TIMEOUT:g} s (is ptrace allowed here?)")
        time.sleep(0.02)


def _count(trace: bytes, file_prefix: str, directories: list[str]) -> tuple[int, int]:
    files = dirs = 0
    prefix = os.fsencode(file_prefix)
    directory_names = {os.fsencode(directory) for directory in directories}
    for line in trace.splitlines():
        match = _CALL.match(line)
        if match is None:
            continue
        path, rest = match.group(2), match.group(3)
        if b"= -1" in rest:
            continue
        if path in directory_names:
            dirs += 1
        elif path.startswith(prefix):
            files += 1
    return files, dirs
