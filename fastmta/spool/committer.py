"""The group-commit thread: makes requested commits durable, many per directory fsync.

One thread per process (started lazily by `Spool._committer()` in the current pid,
so forked workers each get their own), with a small pool of fsync threads.  It
loops: take every commit requested so far, run `commit_batch` on them (files
fsynced in parallel, renamed, one fsync of incoming/), then wake all their waiters
with one `call_soon_threadsafe` per event loop.  While
it works on one batch the next one gathers, so more concurrency means bigger
batches, not a longer queue at the disk.

Invariants:
- A waiter is woken only after the directory fsync that covers its rename.
- The thread never dies with waiters left hanging: an unexpected exception fails
  the whole batch with that error.
- `close()` finishes what was submitted, then stops the thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from fastmta.spool.errors import SpoolError
from fastmta.spool.writer import MessageWriter, commit_batch

if TYPE_CHECKING:
    from fastmta.spool.core import Spool

__all__ = ["GroupCommitter"]

log = logging.getLogger("fastmta.spool")


def _resolve(writers: list[MessageWriter]) -> None:
    """On the event loop: settle each writer's future."""
    for writer in writers:
        future = writer._future
        if future is None or future.done():
            continue  # the waiting task was cancelled
        if writer._error is not None:
            future.set_exception(writer._spool_error())
        else:
            future.set_result(None)


class GroupCommitter:
    """Owns the commit thread of one process for one spool."""

    def __init__(self, spool: Spool, pid: int) -> None:
        self.pid = pid
        self._spool = spool
        self._condition = threading.Condition(threading.Lock())
        self._pending: list[MessageWriter] = []
        self._closing = False
        # Created here, in the pid that uses it; its threads only run _write_and_sync.
        self._pool = (ThreadPoolExecutor(spool.fsync_threads, thread_name_prefix="fastmta-spool-fsync")
                      if spool.sync_mode == "fsync" and spool.fsync_threads > 1 else None)
        self._thread = threading.Thread(target=self._run, name="fastmta-spool-commit", daemon=True)
        self._thread.start()

    def submit(self, writer: MessageWriter) -> None:
        with self._condition:
            if self._closing:
                raise SpoolError(f"spool {self._spool.root} is closed; the server is shutting down")
            self._pending.append(writer)
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closing = True
            self._condition.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending:
                    if self._closing:
                        if self._pool is not None:
                            self._pool.shutdown()
                        return
                    self._condition.wait()
                batch, self._pending = self._pending, []
            try:
                commit_batch(batch, self._spool, self._pool)
            except BaseException as exc:  # a bug: never leave waiters hanging
                log.exception("spool commit thread failed; failing %d commits", len(batch))
                for writer in batch:
                    writer._fail(exc)
            self._wake(batch)

    @staticmethod
    def _wake(batch: list[MessageWriter]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[MessageWriter]] = {}
        for writer in batch:
            if writer._loop is not None:
                by_loop.setdefault(writer._loop, []).append(writer)
        for loop, writers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, writers)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more
