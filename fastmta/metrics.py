"""Prometheus metrics of every fastmta process, aggregated by the master (multiprocess mode).

Who records what:
- receive sessions (fastmta.server.session) call `connection_opened/refused/closed`,
  `message_accepted(size, recipients)` and `message_rejected(reason)`;
- delivery workers call `delivery_outcome("delivered" | "deferred" | "bounced", count)`;
- the master counts spool depth and worker liveness itself, at scrape time
  (fastmta.process.metrics_http).

Invariants:
- Recording is a few integer additions in this process (about 0.1 us); nothing is
  written anywhere unless `enable()` ran in the master before the workers forked.
  So without `--metrics` the calls cost next to nothing.
- Receive-side counts are pushed to prometheus_client's per-process files by
  `flush()`, at most `FLUSH_INTERVAL` seconds late (a timer started by
  `start_flushing(loop)`, and once more when the process stops).  A file write costs
  about 2 us, which we do not want on every message.  A worker killed with SIGKILL
  loses at most its last interval of counts; a counter never goes backwards, since
  the files of dead workers stay in the directory and are summed by the master.
- Delivery outcomes are rare and come from loops this module does not own, so
  `delivery_outcome` writes through at once.
- Callers use `metrics.name(...)` (module attribute), never keep metric objects.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

__all__ = [
    "DELIVERY_OUTCOMES",
    "FLUSH_INTERVAL",
    "MULTIPROC_ENV",
    "connection_closed",
    "connection_opened",
    "connection_refused",
    "delivery_outcome",
    "enable",
    "enabled",
    "flush",
    "message_accepted",
    "message_rejected",
    "rejection_reason",
    "start_flushing",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL = 1.0
DELIVERY_OUTCOMES = ("delivered", "deferred", "bounced")

# Why a message the client sent was not queued, by the RFC 3463 code of our reply.
# The label set stays small: the server's replies are constants (protocol/replies.py).
_REASONS = {
    "5.3.4": "too_big",
    "5.6.0": "bare_line_ending",
    "5.4.6": "mail_loop",
    "4.3.1": "spool_failure",
    "4.4.2": "timeout",
    "4.3.2": "shutdown",
    "2.0.0": "client_reset",
}


class _Pending:
    """Counts recorded since the last flush (and the open-connection level)."""

    __slots__ = ("accepted", "bytes", "connections", "open", "recipients", "refused", "rejected")

    def __init__(self) -> None:
        self.connections = 0
        self.refused = 0
        self.open = 0  # a level, not a delta
        self.accepted = 0
        self.bytes = 0
        self.recipients = 0
        self.rejected: dict[str, int] = {}


_pending = _Pending()
_directory: str | None = None
_metrics: dict[str, Any] | None = None  # prometheus_client objects, made in the process that writes


def _after_fork_in_child() -> None:
    global _pending, _metrics
    _pending = _Pending()
    _metrics = None


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- recording (hot path: keep these to integer additions) -------------------------


def connection_opened() -> None:
    """A client connection was admitted (its session starts)."""
    pending = _pending
    pending.connections += 1
    pending.open += 1


def connection_refused() -> None:
    """A client connection was answered 421 at once (a connection limit)."""
    pending = _pending
    pending.connections += 1
    pending.refused += 1


def connection_closed() -> None:
    """An admitted connection ended."""
    _pending.open -= 1


def message_accepted(size: int, recipients: int) -> None:
    """A message is durably queued and its 250 sent."""
    pending = _pending
    pending.accepted += 1
    pending.bytes += size
    pending.recipients += recipients


def message_rejected(reason: str) -> None:
    """A message's content was sent but not queued; `reason` from `rejection_reason`."""
    rejected = _pending.rejected
    rejected[reason] = rejected.get(reason, 0) + 1


def rejection_reason(enhanced_code: str) -> str:
    """A short label for the reply that refused a message, from its RFC 3463 code."""
    return _REASONS.get(enhanced_code, enhanced_code or "other")


def delivery_outcome(kind: str, count: int = 1) -> None:
    """`count` recipients were delivered, deferred or bounced (one call per attempt)."""
    if kind not in DELIVERY_OUTCOMES:
        raise ValueError(f"delivery outcome must be one of {', '.join(DELIVERY_OUTCOMES)}, "
                         f"got {kind!r}")
    if _directory is None:
        return
    _objects()["outcomes"].labels(outcome=kind).inc(count)


# --- setup and flushing ---------------------------------------------------------------


def enable(directory: str) -> None:
    """Turn metrics on for this process and the workers it forks afterwards.

    `directory` is private to this master (prometheus_client writes one file per
    process and metric type there); it must exist and be writable by the workers."""
    global _directory
    if not os.path.isdir(directory):
        raise ValueError(f"metrics directory {directory!r} does not exist")
    os.environ[MULTIPROC_ENV] = directory
    from prometheus_client import values

    # prometheus_client picks its value class when first imported; if that happened
    # before the variable was set, switch it now (before any metric object exists).
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    _directory = directory


def enabled() -> bool:
    return _directory is not None


def _objects() -> dict[str, Any]:
    global _metrics
    if _metrics is None:
        from prometheus_client import Counter, Gauge

        # registry=None: the master collects from the files, not from these objects.
        _metrics = {
            "connections": Counter("fastmta_smtp_connections", "SMTP connections accepted "
                                   "from clients (refused ones included)", registry=None),
            "refused": Counter("fastmta_smtp_connections_refused", "SMTP connections answered "
                               "421 at once because a connection limit was reached",
                               registry=None),
            "open": Gauge("fastmta_smtp_connections_open", "SMTP sessions open now",
                          multiprocess_mode="livesum", registry=None),
            "accepted": Counter("fastmta_messages_accepted", "messages queued and acknowledged "
                                "with 250", registry=None),
            "rejected": Counter("fastmta_messages_rejected", "messages sent by clients but not "
                                "queued, by reason", ["reason"], registry=None),
            "bytes": Counter("fastmta_received_bytes", "octets of accepted messages as the "
                             "clients sent them", registry=None),
            "recipients": Counter("fastmta_recipients_accepted", "recipients of accepted "
                                  "messages", registry=None),
            "outcomes": Counter("fastmta_delivery_outcomes", "delivery attempts per recipient, "
                                "by outcome", ["outcome"], registry=None),
        }
    return _metrics


def flush() -> None:
    """Write the counts recorded since the last flush to this process's metric files."""
    global _pending
    pending = _pending
    _pending = _Pending()
    _pending.open = pending.open
    if _directory is None:
        return
    metrics = _objects()
    for name in ("connections", "refused", "accepted", "bytes", "recipients"):
        amount = getattr(pending, name)
        if amount:
            metrics[name].inc(amount)
    for reason, amount in pending.rejected.items():
        metrics["rejected"].labels(reason=reason).inc(amount)
    metrics["open"].set(pending.open)


def start_flushing(loop: asyncio.AbstractEventLoop) -> None:
    """Flush every FLUSH_INTERVAL seconds on `loop` (no-op when metrics are off)."""
    if _directory is None:
        return

    def tick() -> None:
        flush()
        loop.call_later(FLUSH_INTERVAL, tick)

    loop.call_later(FLUSH_INTERVAL, tick)
