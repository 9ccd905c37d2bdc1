"""The systems bench/compare.py measures, behind one small interface; fastmta lives here.

Each system under test listens on loopback ports chosen by the caller (one fresh
port per measured run, so the TIME_WAIT connections of one run never slow the next
run's connect()), and offers:

    start() / stop()      own processes only, stopped by pid
    root_pid()            the top of the server's process tree (CPU is read over it)
    queued()              messages in its queue not yet delivered
    fsync_paths()         which fsync targets are files being received, which directories

Pipelines (the same for both systems in one comparison, see bench/README.md):
- "discard": received, fsynced, queued, then taken by the queue manager and
  discarded (fastmta: `--transport-map example.test=discard`; Postfix: discard(8)).
- "accept-only": received, fsynced, queued, and left there (fastmta:
  `--delivery-workers 0`; Postfix: no qmgr in master.cf).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["DOMAIN", "HOSTNAME", "PIPELINES", "FastmtaServer", "SystemUnderTest", "count_files",
           "file_create_cost", "free_ports", "wait_for_greeting"]

PIPELINES = ("discard", "accept-only")
DOMAIN = "example.test"  # RFC 2606: reserved, never resolves
HOSTNAME = "mx.example.test"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class SystemUnderTest(Protocol):
    name: str
    log_path: Path

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def root_pid(self) -> int: ...

    def queued(self) -> int: ...

    def fsync_paths(self) -> tuple[str, list[str]]: ...

    def describe(self) -> str: ...

    def remove(self) -> None: ...


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (bound to port 0, then released)."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def wait_for_greeting(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Return once a 220 greeting comes from 127.0.0.1:`port`; raise RuntimeError if not."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                greeting = sock.recv(512)
                if greeting.startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
                last_error = f"greeting {greeting[:60]!r}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"no 220 greeting on 127.0.0.1:{port} within {timeout:g} s ({last_error})")


def file_create_cost(directory: Path, count: int = 50) -> float:
    """Microseconds of CPU to create one empty file in `directory` (made if missing).

    The files stay: deleting them would itself slow later creations down on ext4
    without a journal, which skips inodes freed in the last 60 s (360 s while their
    inode table block is dirty) when it allocates, checking every one of them
    (fs/ext4/ialloc.c, recently_deleted())."""
    directory.mkdir(parents=True, exist_ok=True)
    start = len(os.listdir(directory))
    before = time.process_time()
    for index in range(start, start + count):
        os.close(os.open(directory / f"probe-{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return (time.process_time() - before) / count * 1e6


def count_files(directories: list[Path]) -> int:
    """Regular files anywhere below `directories` (Postfix hashes some queues into subdirectories)."""
    total = 0
    for top in directories:
        for _, _, files in os.walk(top):
            total += len(files)
    return total


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL: only this process, by its pid."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class FastmtaServer:
    """`fastmta serve` from this checkout, spool in `workdir`, on the given ports."""

    name = "fastmta"

    def __init__(self, workdir: Path, ports: list[int], pipeline: str,
                 extra_args: list[str] | None = None) -> None:
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        self.workdir = workdir
        self.ports = ports
        self.pipeline = pipeline
        self.extra_args = list(extra_args or [])
        self.spool = workdir / "spool"
        self.log_path = workdir / "fastmta.log"
        self.process: subprocess.Popen[bytes] | None = None

    def settings(self) -> list[str]:
        """The flags of `fastmta serve` other than the --listen ones."""
        args = ["--spool", str(self.spool), "--hostname", HOSTNAME,
                "--relay-domains", DOMAIN, "--drain-timeout", "5"]
        if self.pipeline == "discard":
            args += ["--transport-map", f"{DOMAIN}=discard"]
        else:
            args += ["--delivery-workers", "0"]
        return args + self.extra_args

    def command(self) -> list[str]:
        listen = [arg for port in self.ports for arg in ("--listen", f"127.0.0.1:{port}")]
        return [sys.executable, "-m", "fastmta", "serve", *listen, *self.settings()]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, start_new_session=True)
        process = self.process
        try:
            wait_for_greeting(self.ports[0], START_TIMEOUT, lambda: process.poll() is None)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"fastmta did not start: {exc}; see {self.log_path}") from None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def remove(self) -> None:
        """Nothing of its own: everything is in the caller's work dir."""

    def root_pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    def queue_dirs(self) -> list[Path]:
        return [self.spool / name for name in ("incoming", "active", "deferred")]

    def queued(self) -> int:
        return count_files(self.queue_dirs())

    def fsync_paths(self) -> tuple[str, list[str]]:
        """(prefix of files being received, directories fsynced to cover their renames).

        Received files are written in tmp/; fsyncs by the delivery side (in active/)
        are not counted."""
        return str(self.spool / "tmp") + "/", [str(self.spool / "incoming")]

    def describe(self) -> str:
        return (f"fastmta serve {' '.join(self.settings())} "
                f"(+ --listen 127.0.0.1:PORT for {len(self.ports)} ports)")
