"""The group-commit threads: make requested commits durable, many per directory fsync.

`spool.fsync_threads` threads per process (started lazily by `Spool._committer()`
in the current pid, so forked workers each get their own) share one queue.  Each
loops: take every commit requested so far, run `commit_batch` on them (files
written and fsynced, renamed, one fsync of incoming/), then wake all their waiters
with one `call_soon_threadsafe` per event loop.  While a thread works on one batch
the next one gathers, so more concurrency means bigger batches, not a longer queue
at the disk; with two threads, a second batch is written and fsynced while the
first one waits for the disk, and the two flushes overlap.

Hand-off costs are kept to the minimum a thread needs: `submit` is one put on a
C-implemented queue (a futex wake only when the thread sleeps), the thread takes
the whole backlog at once, and the wake-up settles every writer of the batch in
one loop callback (a `commit_then` callback or an awaited future each).

Invariants:
- A waiter is woken only after the directory fsync that covers its rename.
- The thread never dies with waiters left hanging: an unexpected exception fails
  the whole batch with that error.
- `close()` finishes what was submitted, then stops the threads; nothing can be
  submitted after it (submit and close exclude each other).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from fastmta.spool.errors import SpoolError
from fastmta.spool.writer import MessageWriter, commit_batch

if TYPE_CHECKING:
    from fastmta.spool.core import Spool

__all__ = ["GroupCommitter"]

log = logging.getLogger("fastmta.spool")


def _resolve(writers: list[MessageWriter]) -> None:
    """On the event loop: run each writer's callback or settle its future."""
    for writer in writers:
        callback = writer._callback
        if callback is not None:
            writer._callback = None
            try:
                callback(writer, writer._spool_error() if writer._error is not None else None)
            except Exception:  # one session's bug must not leave the others hanging
                log.exception("commit callback for %s failed", writer.queue_id)
            continue
        future = writer._future
        if future is None or future.done():
            continue  # the waiting task was cancelled
        if writer._error is not None:
            future.set_exception(writer._spool_error())
        else:
            future.set_result(None)


class GroupCommitter:
    """Owns the commit threads of one process for one spool."""

    def __init__(self, spool: Spool, pid: int) -> None:
        self.pid = pid
        self._spool = spool
        self._queue: queue.SimpleQueue[MessageWriter | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # submit vs close: nothing may follow the stop mark
        self._closing = False
        self._threads = [threading.Thread(target=self._run, name=f"fastmta-spool-commit-{index}",
                                          daemon=True)
                         for index in range(spool.fsync_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, writer: MessageWriter) -> None:
        with self._lock:
            if self._closing:
                raise SpoolError(f"spool {self._spool.root} is closed; the server is shutting down")
            self._queue.put(writer)

    def close(self) -> None:
        with self._lock:
            if not self._closing:
                self._closing = True
                self._queue.put(None)  # the stop mark: everything before it is committed
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join()

    def _run(self) -> None:
        pending = self._queue
        while True:
            item = pending.get()  # sleeps, GIL released, until a commit is submitted
            batch: list[MessageWriter] = []
            while item is not None:
                batch.append(item)
                if pending.empty():
                    break
                item = pending.get_nowait()
            if batch:
                try:
                    commit_batch(batch, self._spool)
                except BaseException as exc:  # a bug: never leave waiters hanging
                    log.exception("spool commit thread failed; failing %d commits", len(batch))
                    for writer in batch:
                        writer._fail(exc)
                self._wake(batch)
            if item is None:
                pending.put(None)  # leave the stop mark for the other threads
                return

    @staticmethod
    def _wake(batch: list[MessageWriter]) -> None:
        first = batch[0]._loop
        if all(writer._loop is first for writer in batch):  # the usual case: one loop
            groups = {first: batch} if first is not None else {}
        else:
            groups = {}
            for writer in batch:
                if writer._loop is not None:
                    groups.setdefault(writer._loop, []).append(writer)
        for loop, writers in groups.items():
            try:
                loop.call_soon_threadsafe(_resolve, writers)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more
