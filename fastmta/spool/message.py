"""Handles on queue files: `MessageFile` to read one, `ActiveMessage` to deliver one.

A delivery worker gets an `ActiveMessage` from `Spool.claim_next()`: the file is in
active/ and this process owns it until it calls exactly one of `complete()`,
`defer(next_try)` or `release()` (leaving a `with` block without one releases it).

Invariants:
- Recipient updates never rewrite the message.  `mark_delivered` overwrites state
  bytes in place (each byte is old or new after a crash) and fdatasyncs;
  `mark_deferred`/`mark_failed`/`mark_delay_warned` append one checksummed record per
  recipient and fsync.  Either way the update is durable when the call returns,
  and a crash leaves each recipient in its old or its new state (docs/spool.md).
- A torn record left by a crash is cut off (ftruncate) before the next append, so
  records never follow garbage.
- A state only moves forward; marking a recipient that is already done raises.
- The in-memory envelope changes only after the disk write succeeded.

Each update blocks for one fsync (about 0.1-1 ms): on an event loop, run it in a
thread (`await asyncio.to_thread(message.mark_delivered, [0])`), one update at a
time per message (the handle is not safe for concurrent use).  The endings
`complete()`, `defer()` and `release()` are one unlink or rename (and a futimens)
without a flush, cheap enough for an event loop; `complete(sync=True)` fsyncs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from fastmta.spool.envelope import Envelope, Recipient, RecipientState
from fastmta.spool.errors import SpoolError
from fastmta.spool.fileformat import ParsedFile, encode_record, iter_body, parse_file
from fastmta.spool.fsutil import describe_os_error, fsync_directory

if TYPE_CHECKING:
    from fastmta.spool.core import Spool

__all__ = ["ActiveMessage", "MessageFile", "open_message_file"]


class MessageFile:
    """A parsed queue file and an open descriptor to stream its body from."""

    def __init__(self, fd: int, path: str, parsed: ParsedFile) -> None:
        self._fd: int | None = fd
        self.path = path
        self.parsed = parsed

    @property
    def queue_id(self) -> str:
        return self.parsed.queue_id

    @property
    def arrival(self) -> float:
        return self.parsed.arrival

    @property
    def envelope(self) -> Envelope:
        return self.parsed.envelope

    @property
    def recipients(self) -> list[Recipient]:
        return self.parsed.envelope.recipients

    @property
    def body_length(self) -> int:
        return self.parsed.body_length

    @property
    def body_offset(self) -> int:
        return self.parsed.body_offset

    @property
    def delay_warned(self) -> float | None:
        return self.parsed.delay_warned

    @property
    def closed(self) -> bool:
        """True once closed: for an ActiveMessage, once it was completed, deferred or
        released (this process no longer owns it)."""
        return self._fd is None

    def fileno(self) -> int:
        """The descriptor, for os.sendfile(out, fileno(), body_offset, body_length)."""
        if self._fd is None:
            raise RuntimeError(f"message {self.queue_id} is closed")
        return self._fd

    def iter_body(self, chunk_size: int = 262144, verify: bool = True) -> Iterator[bytes]:
        """The message content in chunks, without loading it whole.  With `verify`
        the last chunk is yielded only after its crc32 matched (SpoolCorruptError
        otherwise), so a damaged body is never sent complete."""
        return iter_body(self.fileno(), self.parsed, chunk_size, verify)

    def read_body(self, verify: bool = True) -> bytes:
        return b"".join(self.iter_body(verify=verify))

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_message_file(path: str, writable: bool = False) -> tuple[int, ParsedFile]:
    """Open and parse; the caller owns the returned fd.  Raises OSError or SpoolCorruptError."""
    fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        return fd, parse_file(fd)
    except BaseException:
        os.close(fd)
        raise


class ActiveMessage(MessageFile):
    """A message claimed into active/ by this process."""

    def __init__(self, spool: Spool, fd: int, parsed: ParsedFile, source: str) -> None:
        super().__init__(fd, f"{spool.active_dir}/{parsed.queue_id}", parsed)
        self.source = source  # "incoming" or "deferred": where it was claimed from
        self._spool = spool

    def pending_indices(self) -> list[int]:
        """Recipients still to deliver (PENDING or DEFERRED)."""
        return self.envelope.pending_indices()

    @property
    def all_done(self) -> bool:
        return all(rcpt.state.done for rcpt in self.recipients)

    # --- durable state updates -----------------------------------------------------

    def mark_delivered(self, indices: Iterable[int]) -> None:
        """Record that these recipients were accepted by the next hop (one fdatasync)."""
        chosen = self._check(indices)
        if not chosen:
            return
        low, high = min(chosen), max(chosen)
        current = bytearray(ord(rcpt.state.value) for rcpt in self.recipients[low:high + 1])
        for index in chosen:
            current[index - low] = ord(RecipientState.DELIVERED.value)
        fd = self.fileno()
        try:
            written = os.pwrite(fd, current, self.parsed.state_offset + low)
            if written != len(current):
                raise OSError(5, "short write of the state bytes")
            os.fdatasync(fd)
        except OSError as exc:
            raise self._error("record delivery for", exc) from exc
        for index in chosen:
            self.recipients[index].state = RecipientState.DELIVERED

    def mark_deferred(self, indices: Iterable[int], error: str, *, remote: str | None = None,
                      when: float | None = None) -> None:
        """Record a transient failure (4xx, timeout, connection refused) for these recipients."""
        self._record_attempt(indices, RecipientState.DEFERRED, error, remote, when)

    def mark_failed(self, indices: Iterable[int], error: str, *, remote: str | None = None,
                    when: float | None = None) -> None:
        """Record a permanent failure (5xx, expiry) for these recipients: a DSN is due."""
        self._record_attempt(indices, RecipientState.FAILED, error, remote, when)

    def mark_delay_warned(self, when: float | None = None) -> None:
        """Record that the delay DSN was sent, so it is sent once."""
        moment = time.time() if when is None else when
        self._append([encode_record({"w": moment})])
        self.parsed.delay_warned = moment

    # --- moves: each ends the ownership -------------------------------------------

    def defer(self, next_try: float) -> None:
        """Move to deferred/ to be retried at `next_try` (stored as the file's mtime).

        No fsync: if a crash loses the move or the mtime, the message is only retried
        early (recover() returns an active/ file with a future mtime to deferred/)."""
        fd = self.fileno()
        try:
            os.utime(fd, (next_try, next_try))
            os.rename(self.path, f"{self._spool.deferred_dir}/{self.queue_id}")
        except OSError as exc:
            raise self._error("defer", exc) from exc
        self._spool._claimer.note_deferred(self.queue_id, next_try)
        self.close()

    def complete(self, sync: bool = False) -> None:
        """Remove the message: every recipient is delivered, or failed and bounced.
        The file goes to retired/ to be reused by a new message, or is unlinked
        (`FilePool.retire`).

        Not fsynced by default: a file a power loss brings back is delivered again to
        the recipients not recorded as done in it (a caller may skip recording the
        deliveries that this removal ends; docs/spool.md).  Pass sync=True after
        queueing a DSN, so a crash cannot cause a second one."""
        fd = self.fileno()
        try:
            self._spool.pool.retire(self.path, self.queue_id, os.fstat(fd).st_size)
            if sync:
                fsync_directory(self._spool.active_dir)
        except OSError as exc:
            raise self._error("remove", exc) from exc
        self.close()

    def release(self) -> None:
        """Give the message back to incoming/ untouched (e.g. the worker is stopping)."""
        self.fileno()
        try:
            os.rename(self.path, f"{self._spool.incoming_dir}/{self.queue_id}")
        except OSError as exc:
            raise self._error("release", exc) from exc
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            self.release()

    # --- internals -------------------------------------------------------------------

    def _check(self, indices: Iterable[int]) -> list[int]:
        chosen = sorted(set(indices))
        for index in chosen:
            if not 0 <= index < len(self.recipients):
                raise IndexError(f"message {self.queue_id} has no recipient {index}")
            if self.recipients[index].state.done:
                raise ValueError(
                    f"recipient {index} of {self.queue_id} is already "
                    f"{self.recipients[index].state.name.lower()}; its state cannot change again")
        return chosen

    def _record_attempt(self, indices: Iterable[int], state: RecipientState, error: str,
                        remote: str | None, when: float | None) -> None:
        chosen = self._check(indices)
        if not chosen:
            return
        moment = time.time() if when is None else when
        records = []
        for index in chosen:
            fields: dict[str, Any] = {"r": index, "s": state.value,
                                      "n": self.recipients[index].attempts + 1, "t": moment, "e": error}
            if remote is not None:
                fields["m"] = remote
            records.append(encode_record(fields))
        self._append(records)
        for index in chosen:
            rcpt = self.recipients[index]
            rcpt.state, rcpt.attempts, rcpt.last_attempt = state, rcpt.attempts + 1, moment
            rcpt.last_error, rcpt.remote = error, remote

    def _append(self, records: list[bytes]) -> None:
        fd = self.fileno()
        parsed = self.parsed
        data = b"".join(records)
        try:
            if parsed.file_end != parsed.records_end:
                os.ftruncate(fd, parsed.records_end)  # cut a torn record off first
                parsed.file_end = parsed.records_end
            parsed.file_end = -1  # unknown until the write is known to be whole
            if os.pwrite(fd, data, parsed.records_end) != len(data):
                raise OSError(5, "short write of a state record")
            os.fsync(fd)
        except OSError as exc:
            raise self._error("record the state of", exc) from exc
        parsed.records_end += len(data)
        parsed.file_end = parsed.records_end

    def _error(self, action: str, exc: OSError) -> SpoolError:
        return SpoolError(f"could not {action} message {self.queue_id} in {self.path}: "
                          f"{describe_os_error(exc)}")
