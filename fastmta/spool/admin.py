"""Operator view of the queue: list, show, hold, release, delete, flush, stats.

What `fastmta queue ...` calls.  Safe while receive and delivery workers run:
every change is one rename or unlink of a file that is not in active/, so it races
only with other renames, and exactly one of them wins.

Rules for messages being delivered (in active/, owned by a worker):
- hold and delete refuse with MessageBusyError ("try again when the attempt is
  over"): pulling a file from under a worker could deliver it after the operator
  was told it was gone.  `delete_all` skips them and reports how many.
- flush does nothing for them (they are being tried now).
- list and show read them (a worker only appends records or flips state bytes,
  which a reader sees whole or not at all).

Each change is made durable (directory fsync) before the call returns.  Ids typed
by an operator are validated before they touch a path.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from fastmta.spool.core import QUEUES, Spool
from fastmta.spool.envelope import Recipient
from fastmta.spool.errors import (
    MessageBusyError,
    MessageNotFoundError,
    SpoolCorruptError,
    SpoolError,
)
from fastmta.spool.fsutil import describe_os_error, fsync_directory
from fastmta.spool.message import open_message_file
from fastmta.spool.queueid import is_queue_id, normalise_queue_id, queue_id_time

__all__ = ["QueueAdmin", "QueueEntry", "QueueStats"]


@dataclass(slots=True)
class QueueEntry:
    """One line of `fastmta queue list`."""

    queue_id: str
    queue: str  # incoming, active, deferred, hold or corrupt
    arrival: float | None
    size: int  # message bytes (file bytes for a corrupt file)
    sender: str | None
    recipients: list[Recipient]
    next_try: float | None  # deferred only: when it is due
    last_error: str | None  # the most recent error of any recipient
    delay_warned: float | None = None
    problem: str | None = None  # corrupt only: why it does not parse

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for `queue list --json`."""
        data = asdict(self)
        data["recipients"] = [
            {**asdict(rcpt), "state": rcpt.state.name.lower()} for rcpt in self.recipients
        ]
        return data


@dataclass(frozen=True, slots=True)
class QueueStats:
    count: int
    bytes: int


class QueueAdmin:
    """Operator functions over one spool."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    # --- reading -----------------------------------------------------------------------

    def list(self, queues: tuple[str, ...] = QUEUES) -> list[QueueEntry]:
        """Every message in `queues`, oldest first."""
        entries = []
        for queue in queues:
            directory = f"{self.spool.root_str}/{queue}"
            for name in _names(directory):
                entry = self._entry(queue, name)
                if entry is not None:
                    entries.append(entry)
        entries.sort(key=lambda entry: entry.queue_id)
        return entries

    def show(self, queue_id: str) -> QueueEntry:
        """The entry of one message wherever it is (`open_message` gives its content)."""
        queue_id = self._id(queue_id)
        for _ in range(3):  # it may move between queues while we look
            for queue in QUEUES:
                entry = self._entry(queue, queue_id)
                if entry is not None:
                    return entry
        raise _not_found(queue_id)

    def stats(self) -> dict[str, QueueStats]:
        """Count and bytes per directory (tmp/ included: messages being received)."""
        result = {}
        for queue in ("tmp", *QUEUES):
            count = size = 0
            try:
                with os.scandir(f"{self.spool.root_str}/{queue}") as scan:
                    for entry in scan:
                        try:
                            size += entry.stat(follow_symlinks=False).st_size
                            count += 1
                        except FileNotFoundError:
                            continue
            except OSError as exc:
                raise SpoolError(f"cannot list {queue}/: {describe_os_error(exc)}") from exc
            result[queue] = QueueStats(count, size)
        return result

    # --- changing ----------------------------------------------------------------------

    def hold(self, queue_id: str) -> str:
        """Move a message to hold/ (delivery stops trying it); returns where it was."""
        queue_id = self._id(queue_id)
        for _ in range(3):
            for queue in ("incoming", "deferred"):
                if self._move(queue, queue_id, "hold"):
                    fsync_directory(self.spool.hold_dir)
                    return queue
            if self._exists("hold", queue_id):
                return "hold"
            if self._exists("active", queue_id):
                raise _busy(queue_id, "hold")
            if self._exists("corrupt", queue_id):
                raise SpoolError(f"message {queue_id} is in corrupt/ and is not delivered anyway")
        raise _not_found(queue_id)

    def release(self, queue_id: str) -> None:
        """Move a held message to incoming/ so it is tried now."""
        queue_id = self._id(queue_id)
        held = self.spool.path("hold", queue_id)
        try:
            now = time.time()
            os.utime(held, (now, now))  # a stale future mtime must not survive a later crash
        except FileNotFoundError:
            where = self._where(queue_id)
            if where is None:
                raise _not_found(queue_id) from None
            raise SpoolError(f"message {queue_id} is not on hold (it is in {where}/)") from None
        if not self._move("hold", queue_id, "incoming"):
            raise _not_found(queue_id)
        fsync_directory(self.spool.incoming_dir)

    def delete(self, queue_id: str) -> str:
        """Remove a message that is not being delivered; returns the queue it was in."""
        queue_id = self._id(queue_id)
        for _ in range(3):
            for queue in ("incoming", "deferred", "hold", "corrupt"):
                if self._unlink(queue, queue_id):
                    fsync_directory(f"{self.spool.root_str}/{queue}")
                    return queue
            if self._exists("active", queue_id):
                raise _busy(queue_id, "delete")
        raise _not_found(queue_id)

    def delete_all(self, queues: tuple[str, ...] = ("incoming", "deferred", "hold")) -> tuple[int, int]:
        """Remove every message in `queues`; returns (deleted, skipped because active)."""
        if "active" in queues:
            raise ValueError("active messages belong to a delivery worker and cannot be deleted")
        deleted = 0
        for queue in queues:
            for name in _names(f"{self.spool.root_str}/{queue}"):
                deleted += self._unlink(queue, name)
            fsync_directory(f"{self.spool.root_str}/{queue}")
        busy = len(_names(self.spool.active_dir))
        return deleted, busy

    def flush(self, queue_id: str | None = None) -> int:
        """Make deferred messages due now (all, or one); returns how many were moved.

        Each is given mtime = now and moved to incoming/, where delivery looks first."""
        if queue_id is None:
            names = _names(self.spool.deferred_dir)
        else:
            queue_id = self._id(queue_id)
            where = self._where(queue_id)
            if where is None:
                raise _not_found(queue_id)
            if where == "hold":
                raise SpoolError(f"message {queue_id} is on hold; `fastmta queue release {queue_id}` "
                                 "makes it due")
            if where == "corrupt":
                raise SpoolError(f"message {queue_id} is in corrupt/ and cannot be delivered; "
                                 f"inspect {self.spool.path('corrupt', queue_id)}")
            names = [queue_id] if where == "deferred" else []
        moved = 0
        now = time.time()
        for name in names:
            try:
                os.utime(self.spool.path("deferred", name), (now, now))
            except FileNotFoundError:
                continue  # claimed by a worker meanwhile: it is being tried now anyway
            moved += self._move("deferred", name, "incoming")
        if moved:
            fsync_directory(self.spool.incoming_dir)
        return moved

    # --- internals -----------------------------------------------------------------------

    @staticmethod
    def _id(text: str) -> str:
        queue_id = normalise_queue_id(text)
        if queue_id is None:
            raise MessageNotFoundError(f"{text!r} is not a queue id; `fastmta queue list` shows them")
        return queue_id

    def _entry(self, queue: str, name: str) -> QueueEntry | None:
        path = self.spool.path(queue, name)
        try:
            fd, parsed = open_message_file(path)
        except FileNotFoundError:
            return None  # moved or removed since the listing
        except SpoolCorruptError as exc:
            return self._corrupt_entry(queue, name, path, str(exc))
        except OSError as exc:
            return self._corrupt_entry(queue, name, path, f"unreadable: {describe_os_error(exc)}")
        try:
            mtime = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        recipients = parsed.envelope.recipients
        attempted = [rcpt for rcpt in recipients if rcpt.last_attempt is not None]
        last = max(attempted, key=lambda rcpt: rcpt.last_attempt or 0.0, default=None)
        return QueueEntry(
            queue_id=parsed.queue_id, queue=queue, arrival=parsed.arrival, size=parsed.body_length,
            sender=parsed.envelope.sender, recipients=recipients,
            next_try=mtime if queue == "deferred" else None,
            last_error=last.last_error if last is not None else None,
            delay_warned=parsed.delay_warned,
        )

    @staticmethod
    def _corrupt_entry(queue: str, name: str, path: str, problem: str) -> QueueEntry:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        arrival = queue_id_time(name) if is_queue_id(name) else None
        return QueueEntry(name, queue, arrival, size, None, [], None, None, problem=problem)

    def _where(self, queue_id: str) -> str | None:
        for queue in QUEUES:
            if self._exists(queue, queue_id):
                return queue
        return None

    def _exists(self, queue: str, queue_id: str) -> bool:
        return os.path.lexists(self.spool.path(queue, queue_id))

    def _move(self, source: str, queue_id: str, target: str) -> bool:
        try:
            os.rename(self.spool.path(source, queue_id), self.spool.path(target, queue_id))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SpoolError(f"cannot move {queue_id} from {source}/ to {target}/: "
                             f"{describe_os_error(exc)}") from exc

    def _unlink(self, queue: str, queue_id: str) -> bool:
        try:
            os.unlink(self.spool.path(queue, queue_id))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SpoolError(f"cannot delete {queue_id} from {queue}/: {describe_os_error(exc)}") from exc


def _names(directory: str) -> list[str]:
    try:
        return [name for name in os.listdir(directory) if not name.startswith(".")]
    except OSError as exc:
        raise SpoolError(f"cannot list {directory}: {describe_os_error(exc)}") from exc


def _not_found(queue_id: str) -> MessageNotFoundError:
    return MessageNotFoundError(f"no message {queue_id} in the queue (it may have been delivered); "
                                "`fastmta queue list` shows the ids")


def _busy(queue_id: str, action: str) -> MessageBusyError:
    return MessageBusyError(
        f"message {queue_id} is being delivered right now (it is in active/); "
        f"run `fastmta queue {action} {queue_id}` again when this attempt is over")
