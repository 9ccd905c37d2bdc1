"""The two clients bench/compare.py drives each server with: fastmta's loadgen and Postfix's
smtp-source, sending the same load.

A `Load` is C concurrent connections, each sending K messages before it reconnects,
of a given payload size.  Both clients send the same octets per message: smtp-source
sends `payload` octets of body under about 128 octets of headers (From, To, Date,
Message-Id), so loadgen is asked for `payload + SMTP_SOURCE_HEADERS` octets in all.

- loadgen (in this process, `fastmta.loadgen.run_load`) runs for a fixed time; it
  reports the latency of every final 250 and whether each message got one.
- smtp-source runs for a fixed message count.  It has no "K per connection": without
  `-d` it opens a connection per message (K = 1, one invocation for the whole count);
  with `-d` its sessions keep their connection until the count is spent, so K = 10 is
  `-d -s C -m C*10`, invoked again until the count is reached (each invocation's last
  sessions finish alone, a small cost counted against both servers alike).  Without
  `-A` it exits non-zero at the first reply that is not 2xx, so exit status 0 means
  every message got its 250.  It reports no latencies.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from fastmta.loadgen import LoadSpec, run_load

__all__ = [
    "RECIPIENT",
    "SENDER",
    "ClientResult",
    "Load",
    "run_loadgen",
    "run_smtp_source",
    "smtp_source_path",
]

SENDER = "a@example.com"
RECIPIENT = "u@example.test"
SMTP_SOURCE_HEADERS = 128  # octets smtp-source puts above its -l payload (measured: 127-131)
CLIENT_TIMEOUT = 60.0  # seconds a connection may wait for a reply before it counts as failed


@dataclass(frozen=True)
class Load:
    connections: int
    payload: int  # octets of body, as smtp-source's -l
    per_connection: int

    @property
    def size_label(self) -> str:
        return f"{self.payload // 1024}k" if self.payload % 1024 == 0 else f"{self.payload}b"

    @property
    def name(self) -> str:
        """"20x1k/1": 20 connections, 1 KiB payload, 1 message per connection."""
        return f"{self.connections}x{self.size_label}/{self.per_connection}"

    @property
    def message_size(self) -> int:
        return self.payload + SMTP_SOURCE_HEADERS

    @property
    def round_size(self) -> int:
        """Messages in one round of every connection sending its K."""
        return self.connections * self.per_connection


@dataclass
class ClientResult:
    client: str
    messages: int  # messages that got their 250
    seconds: float
    all_accepted: bool
    p99_ms: float | None = None
    client_cpu_bound: bool = False
    problem: str | None = None  # what went wrong, for the table's notes

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def smtp_source_path() -> str | None:
    found = shutil.which("smtp-source")
    if found:
        return found
    candidate = "/usr/sbin/smtp-source"
    return candidate if os.access(candidate, os.X_OK) else None


def loadgen_spec(port: int, load: Load, *, seconds: float | None = None,
                 messages: int | None = None) -> LoadSpec:
    return LoadSpec("127.0.0.1", port, connections=load.connections, messages=messages,
                    size=load.message_size, per_connection=load.per_connection,
                    duration=seconds, sender=SENDER, to=RECIPIENT, timeout=CLIENT_TIMEOUT)


def run_loadgen(port: int, load: Load, *, seconds: float | None = None,
                messages: int | None = None) -> ClientResult:
    """Drive 127.0.0.1:`port` for `seconds` (or `messages`) with fastmta's loadgen."""
    report = run_load(loadgen_spec(port, load, seconds=seconds, messages=messages))
    data = report.to_dict()
    problem = None
    if not report.all_accepted:
        problem = ("not every message got its 250: "
                   f"replies {data['replies_by_code']}, session errors {data['session_errors']}, "
                   f"connect errors {data['connect_errors']}")
    return ClientResult("loadgen", int(data["messages_accepted"]), report.elapsed,
                        report.all_accepted, float(data["latency_ms"]["p99"]), report.cpu_bound,
                        problem)


def smtp_source_count(load: Load, rate: float, seconds: float) -> int:
    """Messages for about `seconds` at `rate`, in whole rounds of C x K (at least one)."""
    rounds = max(1, math.ceil(rate * seconds / load.round_size))
    return rounds * load.round_size


def run_smtp_source(port: int, load: Load, messages: int) -> ClientResult:
    """Send `messages` (a multiple of C x K) to 127.0.0.1:`port` with smtp-source."""
    program = smtp_source_path()
    if program is None:
        raise RuntimeError("smtp-source is not installed; install it with `apt-get install postfix`")
    common = [program, "-s", str(load.connections), "-l", str(load.payload),
              "-f", SENDER, "-t", RECIPIENT]
    target = f"127.0.0.1:{port}"
    if load.per_connection == 1:
        invocations = [[*common, "-m", str(messages), target]]
    else:
        rounds = messages // load.round_size
        invocations = [[*common, "-d", "-m", str(load.round_size), target]] * rounds
    started = time.perf_counter()
    sent = 0
    for command in invocations:
        finished = subprocess.run(command, check=False, capture_output=True, text=True,
                                  timeout=CLIENT_TIMEOUT + messages)
        if finished.returncode != 0:
            elapsed = time.perf_counter() - started
            detail = (finished.stderr or finished.stdout).strip().splitlines()
            return ClientResult("smtp-source", sent, elapsed, False,
                                problem=f"smtp-source failed: {detail[-1] if detail else 'no output'}")
        sent += int(command[command.index("-m") + 1])
    return ClientResult("smtp-source", sent, time.perf_counter() - started, True)
