"""One log format for every fastmta process: each line names the process role and pid.

    2026-11-29 10:00:00,123 receive.1[4242] INFO fastmta.smtpd: 127.0.0.1:50000: ...

The role is "master", "receive.N", "delivery.N" or "single" (`--workers 0`); a forked
child calls `set_role` first thing.  Lines go to stderr (journald or the terminal).

Cheap enough for a line per connection and per message on the receive path:
- `LineHandler` formats without `logging.Formatter` (the date text is computed once a
  second, "ROLE[PID]" once per process) and `setup_logging` turns off the parts of a
  LogRecord nobody reads here (caller frame lookup, thread and process names; the
  "Optimization" section of the logging HOWTO).
- `info(logger, message)` is what the receive path calls for its line per connection
  and per message: straight into the batch, without a LogRecord, whenever that is
  indistinguishable from `logger.info` (see its docstring).
- A process whose event loop logs a lot calls `batch_writes(loop)`: lines logged on that
  loop's thread are collected and written together once per loop iteration (a
  `call_soon` scheduled by the first line), instead of one write(2) each.  Lines from
  other threads, and every line when no loop batches, are written at once.
  `flush()` writes what is pending (the worker calls it before it exits).

Invariants:
- Every write(2) holds whole lines and at most PIPE_BUF octets (a single longer line is
  written alone), so lines of different processes sharing stderr never interleave.
- A forked child starts with an empty batch: it never writes its parent's lines.
- Logging never raises into the caller: a failed write drops the lines (stderr gone).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
import threading
import time
from typing import TextIO

__all__ = ["FORMAT", "LineHandler", "batch_writes", "flush", "info", "role", "set_role", "setup_logging"]

# What LineHandler writes, in logging.Formatter terms (for other handlers, e.g. tests).
FORMAT = "%(asctime)s %(role)s[%(process)d] %(levelname)s %(name)s: %(message)s"
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)

_role = "master"
_handler: LineHandler | None = None


def set_role(role: str) -> None:
    global _role
    _role = role
    if _handler is not None:
        _handler.forget_prefix()


def role() -> str:
    return _role


class LineHandler(logging.Handler):
    """Writes `TIME ROLE[PID] LEVEL LOGGER: message` lines to a stream, batched per
    loop iteration on the loop given to `batch_on`."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # e.g. a captured stream in tests: write through the object
        self._prefix = ""
        self._second = -1
        self._date = ""
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._exception_formatter = logging.Formatter()

    # --- formatting -------------------------------------------------------------------

    def forget_prefix(self) -> None:
        self._prefix = ""

    def line(self, created: float, level: str, name: str, message: str) -> str:
        """One log line, newline included."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        prefix = self._prefix
        if not prefix:
            prefix = self._prefix = f"{_role}[{os.getpid()}]"
        return f"{self._date},{int((created - second) * 1000):03d} {prefix} {level} {name}: {message}\n"

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(record.created, record.levelname, record.name, record.getMessage())
        if record.exc_info or record.exc_text or record.stack_info:
            extra = []
            if record.exc_info:
                extra.append(self._exception_formatter.formatException(record.exc_info))
            elif record.exc_text:
                extra.append(record.exc_text)
            if record.stack_info:
                extra.append(self._exception_formatter.formatStack(record.stack_info))
            line += "\n".join(extra) + "\n"
        return line

    # --- writing ----------------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        # No lock on the batching thread: only it touches the batch, and the list
        # append is atomic anyway.  Other threads write through under the lock.
        if self._loop_thread == threading.get_ident() and not self.filters:
            try:
                line = self.format(record)
            except Exception:  # noqa: BLE001 - as logging.Handler.emit: report, never raise
                self.handleError(record)
                return True
            self.add_to_batch(line)
            return True
        return super().handle(record)

    def add_to_batch(self, line: str) -> None:
        """On the batching loop's thread: queue `line` for the write at the end of
        this loop iteration."""
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            try:
                self._loop.call_soon(self.flush)  # type: ignore[union-attr]
            except RuntimeError:  # the loop is closed: nothing will run the flush
                self.flush()

    def batching_here(self) -> bool:
        """True on the thread of the loop given to `batch_on`."""
        return self._loop_thread == threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write([self.format(record)])
        except Exception:  # noqa: BLE001 - as logging.Handler.emit: report, never raise
            self.handleError(record)

    def batch_on(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Batch the lines logged on `loop`'s thread (the caller's); None: stop batching."""
        self.flush()
        self._loop = loop
        self._loop_thread = threading.get_ident() if loop is not None else 0

    def flush(self) -> None:
        pending = self._pending
        if pending:
            self._pending = []
            self._write(pending)

    def after_fork_in_child(self) -> None:
        self._pending = []
        self._loop = None
        self._loop_thread = 0
        self._prefix = ""

    def _write(self, lines: list[str]) -> None:
        fd = self._fd
        try:
            if fd is None:
                self._stream.write("".join(lines))
                self._stream.flush()
                return
            data = "".join(lines).encode("utf-8", "backslashreplace")
            if len(data) <= _PIPE_BUF:
                _write_all(fd, data)
                return
            chunk: list[bytes] = []
            size = 0
            for line in lines:
                encoded = line.encode("utf-8", "backslashreplace")
                if chunk and size + len(encoded) > _PIPE_BUF:
                    _write_all(fd, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(encoded)
                size += len(encoded)
            if chunk:
                _write_all(fd, b"".join(chunk))
        except (OSError, ValueError):
            pass  # stderr is gone (closed pipe, full disk): nowhere left to say so


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr in the common format (idempotent)."""
    global _handler
    root = logging.getLogger()
    if _handler is None:
        # Nothing here reads the caller's file and line, the thread or the process name:
        # skip finding them for every record (the pid is in the handler's prefix).
        logging._srcfile = None  # type: ignore[attr-defined]
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
        _handler = LineHandler(sys.stderr)
        root.addHandler(_handler)
        os.register_at_fork(after_in_child=_handler.after_fork_in_child)
    root.setLevel(level)


def info(logger: logging.Logger, message: str) -> None:
    """`logger.info("%s", message)` for the lines logged per connection and per message.

    When the caller is the batching loop's thread and this module's handler is the
    only one the record would reach (no other handler, no filter), the line goes
    into the batch directly: no LogRecord, no handler machinery, about a third of
    the cost.  Otherwise (tests capturing logs, other handlers) it is logged as
    usual.  Call it only when `logger.isEnabledFor(logging.INFO)`, and build
    `message` only then."""
    handler = _handler
    if handler is not None and handler.batching_here() and _reaches_only(logger, handler):
        handler.add_to_batch(handler.line(time.time(), "INFO", logger.name, message))
    else:
        logger.info("%s", message)


def _reaches_only(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether an INFO record of `logger` would be handled by `handler` alone, unfiltered
    (the walk of `Logger.callHandlers`)."""
    if logger.filters or handler.filters or handler.level > logging.INFO:
        return False
    seen = False
    node: logging.Logger | None = logger
    while node is not None:
        for other in node.handlers:
            if other is not handler or seen:
                return False
            seen = True
        node = node.parent if node.propagate else None
    return seen


def batch_writes(loop: asyncio.AbstractEventLoop | None) -> None:
    """Batch log lines logged on `loop` (from its own thread) per loop iteration; None
    stops batching and writes what is pending.  Does nothing before `setup_logging`."""
    if _handler is not None:
        _handler.batch_on(loop)


def flush() -> None:
    """Write the lines still pending in the batch."""
    if _handler is not None:
        _handler.flush()
