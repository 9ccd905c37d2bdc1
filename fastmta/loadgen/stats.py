"""What one load run measured, and how results of worker processes add up.

- `LatencyHistogram`: durations in microseconds in log-linear buckets, exact below
  256 us and within 1/128 (0.8%) above; fixed memory however long the run, and two
  histograms merge by adding counts, so percentiles over several processes are as
  good as over one.  The maximum is kept exactly.
- `WorkerResult`: the counters of one process (picklable, sent to the parent).
- `Report`: the merge of all workers plus what the run was asked to do; `to_dict()`
  is the `--json` object and `render()` the text report.

Every non-2xx reply is counted by stage and code, every connection that could not be
made or broke off is counted by reason: nothing is retried or dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CPU_BOUND_SHARE", "LatencyHistogram", "Report", "WorkerResult"]

_SUB_BITS = 7  # 128 sub-buckets per power of two
_EXACT_LIMIT = 2 << _SUB_BITS  # 256 us: below this each microsecond has its own bucket
_BUCKETS = 64 << _SUB_BITS  # covers every duration up to 2**63 us

# A worker process busy this share of its wall time was the bottleneck, not the server.
CPU_BOUND_SHARE = 0.9


class LatencyHistogram:
    """Mergeable histogram of durations (recorded in seconds, kept in microseconds)."""

    __slots__ = ("count", "counts", "max_us", "total_us")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.max_us = 0
        self.total_us = 0

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1e6)
        if micros < _EXACT_LIMIT:
            index = max(0, micros)
        else:
            shift = micros.bit_length() - (_SUB_BITS + 1)
            index = (shift << _SUB_BITS) + (micros >> shift)
        self.counts[index] += 1
        self.count += 1
        self.total_us += micros
        self.max_us = max(self.max_us, micros)

    def merge(self, other: LatencyHistogram) -> None:
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, other.counts)]
        self.count += other.count
        self.total_us += other.total_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, fraction: float) -> float:
        """The duration in seconds that `fraction` (0..1) of the samples do not exceed."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index, bucket_count in enumerate(self.counts):
            seen += bucket_count
            if seen >= rank:
                return min(_bucket_middle_us(index), self.max_us) / 1e6
        return self.max_us / 1e6

    @property
    def max(self) -> float:
        return self.max_us / 1e6

    @property
    def mean(self) -> float:
        return self.total_us / self.count / 1e6 if self.count else 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Sparse on the wire: a run touches a few hundred of the 8192 buckets.
        used = {index: count for index, count in enumerate(self.counts) if count}
        return {"used": used, "count": self.count, "max_us": self.max_us, "total_us": self.total_us}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.counts = [0] * _BUCKETS
        for index, count in state["used"].items():
            self.counts[index] = count
        self.count = state["count"]
        self.max_us = state["max_us"]
        self.total_us = state["total_us"]


def _bucket_middle_us(index: int) -> float:
    if index < _EXACT_LIMIT:
        return float(index)
    shift = (index >> _SUB_BITS) - 1
    low = (index - (shift << _SUB_BITS)) << shift
    return low + ((1 << shift) - 1) / 2


def _add_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for key, count in other.items():
        into[key] = into.get(key, 0) + count


@dataclass
class WorkerResult:
    """Counters of one process; `merge()` adds another process's into this one."""

    attempted: int = 0  # messages started (MAIL sent)
    accepted: int = 0  # messages whose end of data got a 2xx
    failed: int = 0  # messages that did not: refused at some stage, or the connection broke
    connections: int = 0  # connections established
    pipelined_sessions: int = 0
    tls_sessions: int = 0
    replies: dict[str, int] = field(default_factory=dict)  # "RCPT 550" -> count (non-2xx only)
    session_errors: dict[str, int] = field(default_factory=dict)  # reason -> count
    connect_errors: dict[str, int] = field(default_factory=dict)  # reason -> count
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    started: float = 0.0  # time.monotonic() (system-wide clock, comparable across processes)
    finished: float = 0.0
    cpu_seconds: float = 0.0
    stopped_by: str = "messages"  # "messages", "duration" or "errors"

    def merge(self, other: WorkerResult) -> None:
        self.attempted += other.attempted
        self.accepted += other.accepted
        self.failed += other.failed
        self.connections += other.connections
        self.pipelined_sessions += other.pipelined_sessions
        self.tls_sessions += other.tls_sessions
        _add_counts(self.replies, other.replies)
        _add_counts(self.session_errors, other.session_errors)
        _add_counts(self.connect_errors, other.connect_errors)
        self.latency.merge(other.latency)
        self.started = min(self.started, other.started) if self.started else other.started
        self.finished = max(self.finished, other.finished)
        self.cpu_seconds += other.cpu_seconds
        if other.stopped_by != "messages":
            self.stopped_by = other.stopped_by


@dataclass
class Report:
    """The whole run: what was asked (`settings`), what happened (`total`), per-process CPU."""

    settings: dict[str, Any]
    total: WorkerResult
    busiest_cpu_share: float  # CPU seconds / wall seconds of the busiest worker process
    processes: int
    cores: int

    @property
    def elapsed(self) -> float:
        return max(self.total.finished - self.total.started, 1e-9)

    @property
    def requested(self) -> int | None:
        requested = self.settings.get("messages")
        return int(requested) if requested is not None else None

    @property
    def all_accepted(self) -> bool:
        """Every message sent got its 250, with no error, and all asked for were sent
        (or the --duration ran out first)."""
        total = self.total
        complete = total.stopped_by == "duration" or total.attempted == self.requested
        return (
            complete
            and total.attempted > 0
            and total.accepted == total.attempted
            and not total.replies
            and not total.session_errors
            and not total.connect_errors
        )

    @property
    def cpu_bound(self) -> bool:
        return self.busiest_cpu_share >= CPU_BOUND_SHARE

    def hint(self) -> str | None:
        if any("assign requested address" in reason for reason in self.total.connect_errors):
            return ("the local ports ran out (closed connections wait in TIME_WAIT for a "
                    "minute); send more messages per connection (-k) or fewer messages")
        if not self.cpu_bound:
            return None
        if self.processes < self.cores:
            return (f"loadgen was CPU-bound; add --processes (at most {self.cores}, the "
                    "cores here; results understate the server)")
        return (
            "loadgen was CPU-bound on every core it has; run it on another machine "
            "(results understate the server)"
        )

    def replies_by_code(self) -> dict[str, int]:
        by_code: dict[str, int] = {}
        for key, count in self.total.replies.items():
            code = key.rsplit(" ", 1)[1]
            by_code[code] = by_code.get(code, 0) + count
        return dict(sorted(by_code.items()))

    def to_dict(self) -> dict[str, Any]:
        total = self.total
        latency = total.latency
        size = int(self.settings.get("size", 0))
        return {
            **self.settings,
            "messages_attempted": total.attempted,
            "messages_accepted": total.accepted,
            "messages_failed": total.failed,
            "all_accepted": self.all_accepted,
            "stopped_by": total.stopped_by,
            "elapsed_s": round(self.elapsed, 6),
            "messages_per_s": round(total.accepted / self.elapsed, 3),
            "mb_per_s": round(total.accepted * size / self.elapsed / 1e6, 6),
            "latency_ms": {
                "p50": _ms(latency.percentile(0.50)),
                "p90": _ms(latency.percentile(0.90)),
                "p99": _ms(latency.percentile(0.99)),
                "max": _ms(latency.max),
                "mean": _ms(latency.mean),
                "samples": latency.count,
            },
            "connections_opened": total.connections,
            "sessions_pipelined": total.pipelined_sessions,
            "sessions_tls": total.tls_sessions,
            "connect_errors": dict(sorted(total.connect_errors.items())),
            "session_errors": dict(sorted(total.session_errors.items())),
            "replies_by_code": self.replies_by_code(),
            "replies_by_stage": dict(sorted(total.replies.items())),
            "cpu_s": round(total.cpu_seconds, 3),
            "cpu_share_busiest_process": round(self.busiest_cpu_share, 3),
            "cpu_bound": self.cpu_bound,
            "hint": self.hint(),
        }

    def render(self) -> str:
        data = self.to_dict()
        total = self.total
        connections = f"{data['connections_used']} connections"
        if data["connections_used"] != data["connections"]:
            connections += f" (of {data['connections']} asked for)"
        lines = [
            (f"target {data['target']}: {connections} x "
             f"{data['per_connection']} msg each, {data['size']}-octet messages, "
             f"{data['recipients']} rcpt, pipelining {'on' if data['pipelining'] else 'off'}"
             f"{', STARTTLS' if data['starttls'] else ''}, {self.processes} process(es)"),
            (f"messages: {total.attempted} sent, {total.accepted} got 250, "
             f"{total.failed} failed (stopped by {total.stopped_by})"),
            (f"rate: {data['messages_per_s']:.1f} msg/s, {data['mb_per_s']:.2f} MB/s "
             f"in {self.elapsed:.3f} s"),
            "latency of final 250 (ms): p50 {p50:.3f}  p90 {p90:.3f}  p99 {p99:.3f}  "
            "max {max:.3f}".format(**data["latency_ms"]),
            (f"connections: {total.connections} opened, {total.pipelined_sessions} pipelined, "
             f"{sum(total.connect_errors.values())} could not connect"),
        ]
        for title, counts in (
            ("connect errors", total.connect_errors),
            ("session errors", total.session_errors),
            ("non-2xx replies", total.replies),
        ):
            if counts:
                shown = ", ".join(f"{key} x{count}" for key, count in sorted(counts.items()))
                lines.append(f"{title}: {shown}")
        lines.append(
            f"cpu: {total.cpu_seconds:.2f} s; busiest process at "
            f"{self.busiest_cpu_share:.0%} of a core ({self.cores} cores)"
        )
        hint = self.hint()
        if hint:
            lines.append(hint)
        if self.all_accepted:
            lines.append("result: every message got its 250")
        else:
            missing = (self.requested or total.attempted) - total.accepted
            lines.append(f"result: FAILED, {missing} message(s) did not get a 250")
        return "\n".join(lines)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)
