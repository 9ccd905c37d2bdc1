"""Writing one new message into the spool: tmp/ file, fsync, rename into incoming/.

A `MessageWriter` is made by `Spool.new_message(envelope)` on the receive side (or
`Spool.enqueue` for generated mail).  Its life:

    write(bytes)*  ->  await commit()        durable in incoming/: send the 250
                   ->  abort()               nothing left anywhere

Invariants:
- Memory per message is bounded: content is buffered until `spill_threshold`
  bytes, then written to tmp/<id> (page cache, no fsync) and the buffer emptied.
- `write` never raises an OS error: a failed spill is kept and reported by
  `commit` (so the transport can keep draining DATA and answer 452 at the end).
- A small message costs open + writev + fsync + close + rename, all off the event
  loop in the commit thread, plus a share of one directory fsync per batch
  (`commit_batch`).  The system calls of a whole batch run in one call of the
  `spoolio` kernel (GIL released once); the Python path that makes them one by one
  serves the pause hooks of the crash tests and os functions replaced to inject
  faults.
- Whatever fails, the tmp/ file is removed; a message whose directory fsync failed
  is unlinked from incoming/ too, so a client told "452" is never also delivered
  (unless a delivery worker claimed it in that instant; see docs/spool.md).
- A file reaches incoming/ only complete (end marker written and fsynced), so
  nothing in incoming/ was ever torn by fastmta.
"""

from __future__ import annotations

import asyncio
import errno
import os
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from fastmta._pure.spoolio import open_new_file
from fastmta.kernels import IN_TMP, PUBLISHED, commit_files
from fastmta.spool.errors import SpoolError
from fastmta.spool.fileformat import encode_end_marker, encode_preamble
from fastmta.spool.fsutil import describe_os_error, syncfs, write_all

if TYPE_CHECKING:
    from fastmta.spool.core import Spool

__all__ = ["CommitCallback", "MessageWriter", "PauseHook", "commit_batch"]

PauseHook = Callable[[str, str], None]
# commit_then's callback: (writer, None) once durable, (writer, SpoolError) if not.
CommitCallback = Callable[["MessageWriter", "SpoolError | None"], None]
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

_OPEN, _COMMITTING, _COMMITTED, _ABORTED = range(4)

class MessageWriter:
    """One message being received; see the module docstring for its life."""

    __slots__ = (
        "_buffered",
        "_callback",
        "_chunks",
        "_crc",
        "_created",
        "_envelope_line_length",
        "_error",
        "_fd",
        "_final_path",
        "_future",
        "_head",
        "_header_rest",
        "_loop",
        "_parts",
        "_phase",
        "_renamed",
        "_spool",
        "_tmp_path",
        "arrival",
        "queue_id",
        "size",
    )

    def __init__(self, spool: Spool, queue_id: str, arrival: float, envelope_line: bytes,
                 recipient_count: int) -> None:
        self.queue_id = queue_id
        self.arrival = arrival
        self.size = 0  # body bytes written so far
        self._spool = spool
        self._envelope_line_length = len(envelope_line)
        # Everything after the preamble up to the body; new recipients start PENDING.
        self._header_rest = b"%s\n%s\n" % (envelope_line, b"P" * recipient_count)
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._crc = 0
        self._fd: int | None = None
        self._tmp_path = f"{spool.tmp_dir}/{queue_id}"
        self._final_path = f"{spool.incoming_dir}/{queue_id}"
        self._parts: list[bytes] = []  # what commit writes: set by _start_commit
        self._head: bytes | None = None  # the preamble of a spilled file, written last at 0
        self._created = False  # tmp/<id> exists (or existed)
        self._renamed = False
        self._phase = _OPEN
        self._error: BaseException | None = None
        self._future: asyncio.Future[None] | None = None
        self._callback: CommitCallback | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def buffered(self) -> int:
        """Bytes held in memory (at most about `spill_threshold` plus one chunk)."""
        return self._buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append message content (the Received header first, then the data)."""
        if self._phase != _OPEN:
            raise RuntimeError(f"message {self.queue_id} is already committed or aborted")
        if self._error is not None or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer
        self._crc = zlib.crc32(data, self._crc)
        self.size += len(data)
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= self._spool.spill_threshold:
            self._spill()

    def abort(self) -> None:
        """Drop the message.  After `commit()` was called this does nothing: the
        commit completes on its own."""
        if self._phase != _OPEN:
            return
        self._phase = _ABORTED
        self._chunks = []
        self._buffered = 0
        self._discard()

    async def commit(self) -> None:
        """Make the message durable in incoming/; raise SpoolError if that failed.

        Runs in the spool's group-commit thread; if the awaiting task is cancelled the
        commit still completes (the client, not having seen 250, may send it again)."""
        loop = asyncio.get_running_loop()
        self._start_commit()
        if self._error is not None:
            raise self._spool_error()
        self._loop = loop
        self._future = loop.create_future()
        try:
            self._spool._committer().submit(self)
        except SpoolError:
            self._discard()  # the spool is closed
            raise
        await self._future

    def commit_then(self, callback: CommitCallback,
                    loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`commit()` without a coroutine, for a transport on an event loop: start the
        commit and return at once; `callback(writer, error)` runs later on this thread's
        loop, with error None once the message is durable in incoming/, else the
        SpoolError (a failed spill, a closed spool, a disk error).  It is never called
        from inside `commit_then` itself.  `loop` is the running loop, if the caller
        has it at hand (asking asyncio costs a system call on Python 3.11)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        self._start_commit()
        self._loop = loop
        if self._error is None:
            self._callback = callback
            try:
                self._spool._committer().submit(self)
                return
            except SpoolError as exc:
                self._callback = None
                self._discard()  # the spool is closed
                loop.call_soon(callback, self, exc)
                return
        loop.call_soon(callback, self, self._spool_error())

    def commit_sync(self) -> None:
        """`commit` for code without an event loop (bounces): blocks, same durability."""
        self._start_commit()
        if self._spool.closed:
            self._discard()
            raise SpoolError(f"spool {self._spool.root} is closed; the server is shutting down")
        if self._error is None:
            commit_batch([self], self._spool)
        if self._error is not None:
            raise self._spool_error()

    # --- internals, also used by commit_batch in the commit thread ---------------

    def _start_commit(self) -> None:
        """Close the message to writes and lay out what is left to write (on the
        caller's thread, so the commit thread has less Python to run)."""
        if self._phase != _OPEN:
            raise RuntimeError(f"message {self.queue_id} is already committed or aborted")
        self._phase = _COMMITTING
        if self._error is not None:
            return
        preamble = encode_preamble(self._envelope_line_length, self.size)
        header_crc = zlib.crc32(
            memoryview(self._header_rest)[:self._envelope_line_length + 1], zlib.crc32(preamble))
        end_marker = encode_end_marker(header_crc, self._crc)
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if self._fd is None:
            self._parts = [preamble, self._header_rest, *chunks, end_marker]
        else:  # spilled: the rest, then the preamble with the real body length
            self._parts = [*chunks, end_marker]
            self._head = preamble

    def _spill(self) -> None:
        try:
            if self._fd is None:
                self._fd = os.open(self._tmp_path, _CREATE_FLAGS, 0o600)
                self._created = True
                parts: list[bytes | memoryview] = [
                    encode_preamble(self._envelope_line_length, 0), self._header_rest, *self._chunks]
            else:
                parts = [*self._chunks]
            write_all(self._fd, parts)
        except OSError as exc:
            self._fail(exc)
        self._chunks = []
        self._buffered = 0

    def _write_out(self) -> None:
        """Write everything not yet written, end marker included; no fsync.  A new file
        is a free one of the spool's pool if there is one (as in the kernel)."""
        parts, self._parts = self._parts, []
        reused = False
        if self._fd is None:
            pool = self._spool.pool
            reuse = pool.take(3)  # with spares, as in _commit_with_kernel
            offered = len(reuse)
            try:
                self._fd, reused = open_new_file(os.fsencode(self._tmp_path), reuse)
            except OSError as exc:
                self._created = exc.stage == IN_TMP  # type: ignore[attr-defined]
                raise
            finally:
                pool.give_back(reuse, offered - len(reuse))
            self._created = True
        write_all(self._fd, list(parts))
        head = self._head
        if head is not None and os.pwrite(self._fd, head, 0) != len(head):
            raise OSError(errno.EIO, "short write of the preamble")
        if reused:
            os.ftruncate(self._fd, sum(map(len, parts)))

    def _job(self) -> tuple[int, bytes, bytes, list[bytes], bytes | None]:
        """This file's entry for the spoolio kernel."""
        return (-1 if self._fd is None else self._fd, os.fsencode(self._tmp_path),
                os.fsencode(self._final_path), self._parts, self._head)

    def _committed_by_kernel(self, failure: int, stage: int) -> bool:
        """Take the kernel's verdict on this file (it closed the descriptor)."""
        self._fd = None
        self._parts = []
        if not failure:
            self._renamed = True
            return True
        if stage == IN_TMP:
            self._created = True
        elif stage == PUBLISHED:
            self._created = self._renamed = True
        self._fail(OSError(failure, os.strerror(failure)))
        return False

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _publish(self) -> None:
        os.rename(self._tmp_path, self._final_path)
        self._renamed = True

    def _fail(self, exc: BaseException) -> None:
        """Record the first error and remove every trace of the message."""
        if self._error is None:
            self._error = exc
        self._discard()

    def _discard(self) -> None:
        try:
            self._close_fd()
        except OSError:
            pass
        paths = (self._final_path,) if self._renamed else (self._tmp_path,) if self._created else ()
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # recover() removes tmp/ leftovers at the next start
        self._renamed = self._created = False

    def _spool_error(self) -> SpoolError:
        assert self._error is not None
        return SpoolError(
            f"could not spool message {self.queue_id} in {self._spool.root}: "
            f"{describe_os_error(self._error)}; the message was not accepted"
        )

    def _finished(self) -> None:
        """Called once the batch is durable (or failed); marks the writer done."""
        if self._error is None:
            self._phase = _COMMITTED


# The system calls the spoolio kernel makes itself.  Tests inject disk faults by
# replacing these os functions, which the kernel would not see: while one is
# replaced, batches take the Python path, which calls them.
_OS_CALLS = (os.open, os.writev, os.pwrite, os.fsync, os.close, os.rename)


def _os_calls_untouched() -> bool:
    return (os.open, os.writev, os.pwrite, os.fsync, os.close, os.rename) == _OS_CALLS


def _commit_with_kernel(writers: list[MessageWriter], spool: Spool) -> None:
    """commit_batch in one kernel call: every system call of the batch, GIL released;
    new files are made from the spool's free ones first (fastmta.spool.recycle)."""
    pool = spool.pool
    new_files = sum(1 for writer in writers if writer._fd is None)
    # With spares: another receive worker may have taken some of the names listed here.
    reuse = pool.take(2 * new_files + 2) if new_files else []
    offered = len(reuse)
    try:
        results = commit_files([writer._job() for writer in writers], spool.incoming_fd,
                               spool.sync_mode == "syncfs", reuse)
    finally:
        pool.give_back(reuse, offered - len(reuse))
    published = 0
    for writer, (failure, stage) in zip(writers, results):
        if writer._committed_by_kernel(failure, stage):
            published += 1
        writer._finished()
    if published:
        spool.committed_batches += 1
        spool.committed_messages += published


def _hook(spool: Spool, point: str, writers: Iterable[MessageWriter]) -> None:
    hook = spool.pause_hook
    if hook is not None:
        for writer in writers:
            hook(point, writer.queue_id)


def _write_and_sync(writer: MessageWriter, spool: Spool) -> None:
    """Write out one file and (in "fsync" mode) fsync it; record any failure on the writer."""
    try:
        writer._write_out()
        _hook(spool, "written", (writer,))
        if spool.sync_mode == "fsync":
            assert writer._fd is not None
            os.fsync(writer._fd)
            _hook(spool, "synced", (writer,))
        writer._close_fd()
    except OSError as exc:
        writer._fail(exc)


def commit_batch(writers: list[MessageWriter], spool: Spool) -> None:
    """Make every writer durable in incoming/ with one directory fsync for all.

    sync_mode "fsync": write and fsync each file, then rename each.
    sync_mode "syncfs": write all, one syncfs for the file system, rename all.
    Then one fsync of incoming/ covers every rename.  Data is durable before its
    rename in both modes, so a crash never leaves a torn file in incoming/.
    A writer that fails gets `_error` set and is cleaned up; the others go on.
    """
    if spool.pause_hook is None and _os_calls_untouched():
        _commit_with_kernel(writers, spool)
        return
    for writer in writers:
        _write_and_sync(writer, spool)
    live = [writer for writer in writers if writer._error is None]
    if live and spool.sync_mode == "syncfs":
        try:
            syncfs(spool.incoming_fd)
            _hook(spool, "synced", live)
        except OSError as exc:
            for writer in live:
                writer._fail(exc)
            live = []
    published = []
    for writer in live:
        try:
            writer._publish()
            published.append(writer)
        except OSError as exc:
            writer._fail(exc)
    _hook(spool, "renamed", published)
    if published:
        try:
            os.fsync(spool.incoming_fd)
            spool.committed_batches += 1
            spool.committed_messages += len(published)
            _hook(spool, "dir_synced", published)
        except OSError as exc:
            for writer in published:
                writer._fail(exc)
    for writer in writers:
        writer._finished()
