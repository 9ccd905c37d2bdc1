"""Claiming messages for delivery: a rename into active/ is the only lock.

Any number of delivery processes may call `claim_next()` at once.  Each keeps a
list of candidates from its last directory scan; claiming one is
`rename(incoming/ID or deferred/ID, active/ID)`.  Exactly one rename of a given file
succeeds: that process owns the message; the others get FileNotFoundError and try
their next candidate.  Candidates may be stale, which is harmless.

Scheduling:
- incoming/ is listed (no stat) whenever the candidate list runs dry; ids sort by
  arrival, so the oldest new mail goes first.
- deferred/ is fully scanned (one stat per file, for the mtime = next try) at most
  every `deferred_rescan_interval` seconds; in between, the due entries come from a
  heap of that scan plus this process's own deferrals.  A message another process
  deferred meanwhile is found at the next rescan; retry intervals (minimum 300 s)
  are longer than the rescan interval, so no retry is noticeably late.
- New and due-deferred candidates alternate, so a flood of new mail does not starve
  retries and the other way round.
- A file claimed from deferred/ whose mtime turns out to be in the future (deferred
  again by another process after our scan) is put back untouched.
- A file that does not parse is moved to corrupt/ and logged, never deleted.

A Claimer (one per Spool object) is used from one thread; claiming costs a few
syscalls and no fsync, so it may run on an event loop.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections import deque
from itertools import zip_longest
from typing import TYPE_CHECKING

from fastmta.spool.errors import SpoolCorruptError, SpoolError
from fastmta.spool.fileformat import parse_file
from fastmta.spool.fsutil import describe_os_error
from fastmta.spool.message import ActiveMessage
from fastmta.spool.queueid import is_queue_id

if TYPE_CHECKING:
    from fastmta.spool.core import Spool

__all__ = ["Claimer"]

log = logging.getLogger("fastmta.spool")


class Claimer:
    """Per-process claim state for one spool."""

    def __init__(self, spool: Spool, deferred_rescan_interval: float) -> None:
        self._spool = spool
        self._rescan_interval = deferred_rescan_interval
        self._candidates: deque[tuple[str, str]] = deque()
        self._deferred: list[tuple[float, str]] = []  # heap of (next try, queue id)
        self._deferred_scanned_at: float | None = None  # time.monotonic() of the last scan

    def claim(self, queue_id: str) -> ActiveMessage | None:
        """Claim one message by id from incoming/ or deferred/ (due or not)."""
        for queue in ("incoming", "deferred"):
            message = self._try(queue, queue_id, None)
            if message is not None:
                return message
        return None

    def claim_next(self, now: float | None = None) -> ActiveMessage | None:
        """Claim the next message to deliver, or None if nothing is due."""
        moment = time.time() if now is None else now
        for _ in range(2):
            while self._candidates:
                queue, queue_id = self._candidates.popleft()
                message = self._try(queue, queue_id, moment)
                if message is not None:
                    return message
            if not self._refill(moment):
                return None
        return None

    def note_deferred(self, queue_id: str, next_try: float) -> None:
        heapq.heappush(self._deferred, (next_try, queue_id))

    def forget(self) -> None:
        """Drop cached candidates (after an operator change, or in tests)."""
        self._candidates.clear()
        self._deferred = []
        self._deferred_scanned_at = None

    # --- internals -------------------------------------------------------------------

    def _refill(self, now: float) -> bool:
        spool = self._spool
        try:
            incoming = sorted(name for name in os.listdir(spool.incoming_dir) if is_queue_id(name))
        except OSError as exc:
            raise SpoolError(f"cannot list {spool.incoming_dir}: {describe_os_error(exc)}") from exc
        due = self._due_deferred(now)
        for new, retry in zip_longest(incoming, due):
            if new is not None:
                self._candidates.append(("incoming", new))
            if retry is not None:
                self._candidates.append(("deferred", retry))
        return bool(self._candidates)

    def _due_deferred(self, now: float) -> list[str]:
        clock = time.monotonic()
        if self._deferred_scanned_at is None or clock - self._deferred_scanned_at >= self._rescan_interval:
            self._deferred = self._scan_deferred()
            self._deferred_scanned_at = clock
        due = []
        while self._deferred and self._deferred[0][0] <= now:
            due.append(heapq.heappop(self._deferred)[1])
        return due

    def _scan_deferred(self) -> list[tuple[float, str]]:
        entries = []
        try:
            with os.scandir(self._spool.deferred_dir) as scan:
                for entry in scan:
                    if not is_queue_id(entry.name):
                        continue
                    try:
                        entries.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
                    except FileNotFoundError:
                        continue  # claimed or moved meanwhile
        except OSError as exc:
            raise SpoolError(f"cannot list {self._spool.deferred_dir}: {describe_os_error(exc)}") from exc
        heapq.heapify(entries)
        return entries

    def _try(self, queue: str, queue_id: str, now: float | None) -> ActiveMessage | None:
        """Rename queue/ID into active/; None if another process won or it is not due."""
        spool = self._spool
        source = f"{spool.root_str}/{queue}/{queue_id}"
        active = f"{spool.active_dir}/{queue_id}"
        try:
            os.rename(source, active)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SpoolError(f"cannot claim {source}: {describe_os_error(exc)}") from exc
        try:
            fd = os.open(active, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            self._put_back(active, source)
            raise SpoolError(f"cannot open {active}: {describe_os_error(exc)}") from exc
        if queue == "deferred" and now is not None:
            next_try = os.fstat(fd).st_mtime
            if next_try > now:
                os.close(fd)
                self._put_back(active, source)
                self.note_deferred(queue_id, next_try)
                return None
        try:
            parsed = parse_file(fd)
        except SpoolCorruptError as exc:
            os.close(fd)
            spool.move_to_corrupt(active, queue_id, str(exc))
            return None
        except OSError as exc:
            os.close(fd)
            self._put_back(active, source)
            raise SpoolError(f"cannot read {active}: {describe_os_error(exc)}") from exc
        if parsed.queue_id != queue_id:
            os.close(fd)
            spool.move_to_corrupt(active, queue_id, f"it holds message {parsed.queue_id}")
            return None
        return ActiveMessage(spool, fd, parsed, queue)

    @staticmethod
    def _put_back(active: str, source: str) -> None:
        try:
            os.rename(active, source)
        except OSError as exc:
            log.error("cannot move %s back to %s: %s; recover() at the next start returns it",
                      active, source, describe_os_error(exc))
