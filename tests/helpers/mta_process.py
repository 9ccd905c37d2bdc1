"""A real `python -m fastmta serve` in a subprocess, for the process-model tests.

`MTAProcess` starts the master on 127.0.0.1 port 0 (the port the kernel picked is
read from the master's "listening on" log line, so tests never race for ports), with
its spool and log in the test's tmp_path.  It finds the worker processes through
/proc (psutil is not a dependency) and tells them apart by their process names.
`mta_factory` (for a fixture) kills each whole process tree at the end, whatever
happened.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.server import wait_until  # re-exported for the process tests

RECEIVE_NAME = "fastmta-receive"
DELIVERY_NAME = "fastmta-deliver"
QUEUED = re.compile(rb"queued as ([0-9A-Za-z]+)")


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(text) for text in handle.read().split())
        except FileNotFoundError:
            continue
    return found


def descendants_of(pid: int) -> list[int]:
    result, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            result.append(child)
            todo.append(child)
    return result


def process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


class MTAProcess:
    def __init__(self, tmp_path: Path, *args: str, config_text: str | None = None,
                 listen: str | None = "127.0.0.1:0", spool: Path | None = None) -> None:
        self.tmp_path = tmp_path
        self.spool = spool if spool is not None else tmp_path / "spool"
        self.log_path = tmp_path / f"fastmta-{len(list(tmp_path.glob('fastmta-*.log')))}.log"
        self.config_path = tmp_path / "fastmta.toml"
        command = [sys.executable, "-m", "fastmta", "serve", "--spool", str(self.spool),
                   "--hostname", "mx.test", "--drain-timeout", "5"]
        if listen is not None:  # None: the config file names it
            command += ["--listen", listen]
        if config_text is not None:
            self.config_path.write_text(config_text)
            command += ["--config", str(self.config_path)]
        self.command = command + list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0

    # --- lifecycle -------------------------------------------------------------------

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> MTAProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.tmp_path)
        if wait_ready:
            self.wait_for_log("fastmta ready", timeout)
            self.port = int(self.wait_for_log(r"listening on 127\.0\.0\.1:(\d+)", 1).group(1))
            found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)", self.log())
            if found:
                self.metrics_port = int(found.group(1))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill_tree(self) -> None:
        if self.proc is None:
            return
        for pid in [*descendants_of(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    # --- looking at it ---------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.proc is not None and self.proc.poll() is not None:
                match = re.search(pattern, self.log()[start:])
                if match:
                    return match
                raise AssertionError(f"fastmta exited with {self.proc.returncode} before "
                                     f"logging {pattern!r}:\n{self.log()}")
            return re.search(pattern, self.log()[start:])

        try:
            return wait_until(found, timeout, what=f"log line {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log()}") from None

    def workers(self, name: str | None = None) -> list[int]:
        pids = [pid for pid in children_of(self.pid) if alive(pid)]
        if name is None:
            return pids
        return [pid for pid in pids if process_name(pid) == name]

    def receive_workers(self) -> list[int]:
        return self.workers(RECEIVE_NAME)

    def delivery_workers(self) -> list[int]:
        return self.workers(DELIVERY_NAME)

    # --- talking to it ---------------------------------------------------------------

    def smtp(self, timeout: float = 10.0) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)

    def ehlo_size(self) -> int:
        with self.smtp() as client:
            client.ehlo("client.test")
            return int(client.esmtp_features["size"])

    def send(self, client: smtplib.SMTP, body: bytes = b"Subject: t\r\n\r\nhello\r\n",
             recipient: str = "user@localhost") -> str:
        """One message over an open session; returns the queue id from the 250."""
        client.ehlo_or_helo_if_needed()
        code, _ = client.mail("sender@example.com")
        assert code == 250
        code, _ = client.rcpt(recipient)
        assert code == 250
        code, reply = client.data(body)
        assert code == 250, reply
        match = QUEUED.search(reply)
        assert match, reply
        return match.group(1).decode()


def mta_factory(tmp_path: Path) -> Iterator:
    """For a fixture: yields `make(*flags, config_text=None, ...)` -> an unstarted
    MTAProcess; every process made is killed (with its workers) afterwards."""
    started: list[MTAProcess] = []

    def make(*args: str, **kwargs) -> MTAProcess:
        process = MTAProcess(tmp_path, *args, **kwargs)
        started.append(process)
        return process

    yield make
    for process in started:
        process.kill_tree()


# `mta(*flags, ...)` -> an unstarted MTAProcess (tests/conftest.py loads this module as a plugin).
mta = pytest.fixture(mta_factory, name="mta")


def spool_queue_ids(spool: Path) -> set[str]:
    """Ids of the messages in the spool's queues."""
    ids: set[str] = set()
    for queue in ("incoming", "active", "deferred", "hold"):
        directory = spool / queue
        if directory.is_dir():
            ids.update(os.listdir(directory))
    return ids


def delivered_queue_ids(mail_root: Path) -> set[str]:
    """Ids named in our Received header of every message delivered to a Maildir."""
    ids: set[str] = set()
    if not mail_root.is_dir():
        return ids
    for path in mail_root.rglob("*"):
        if path.is_file() and path.parent.name in ("new", "cur"):
            match = re.search(rb"by mx\.test with E?SMTPS? id ([0-9A-Za-z]+)", path.read_bytes())
            if match:
                ids.add(match.group(1).decode())
    return ids
