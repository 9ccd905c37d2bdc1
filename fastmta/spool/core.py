"""`Spool`: the spool directory tree and the entry point to everything in it.

    root/tmp/        files being written; never acknowledged, removed by recover()
    root/incoming/   committed, waiting for a first delivery attempt
    root/active/     claimed by a delivery worker (renamed in: the rename is the lock)
    root/deferred/   waiting for a retry at the file's mtime
    root/hold/       put aside by the operator
    root/corrupt/    files that do not parse: kept for inspection, never deleted
    root/retired/    delivered messages' files, until their removal is durable
    root/free/       files kept for reuse by new messages (fastmta.spool.recycle)

Other directories under the root (e.g. mail/ for Maildirs) are left alone.  All
the queue directories are on one file system, so every move is an atomic rename.

Invariants:
- A message is in exactly one directory at any time; moves are single renames.
- One group-commit thread per process, started on first use in that pid (safe in
  forked workers: a child never uses its parent's thread or lock).
- `recover()` runs once at start-up, before any receive or delivery worker: it
  assumes nothing else touches tmp/ or active/ meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastmta.spool.claim import Claimer
from fastmta.spool.committer import GroupCommitter
from fastmta.spool.envelope import Envelope
from fastmta.spool.errors import MessageNotFoundError, SpoolCorruptError, SpoolError
from fastmta.spool.fileformat import encode_envelope
from fastmta.spool.fsutil import describe_os_error, fsync_directory
from fastmta.spool.message import ActiveMessage, MessageFile, open_message_file
from fastmta.spool.queueid import is_queue_id, new_queue_id, normalise_queue_id
from fastmta.spool.recycle import DEFAULT_LIMIT, FilePool
from fastmta.spool.writer import MessageWriter, PauseHook

__all__ = ["QUEUES", "SYNC_MODES", "RecoveryReport", "Spool"]

log = logging.getLogger("fastmta.spool")

QUEUES = ("incoming", "active", "deferred", "hold", "corrupt")
SYNC_MODES = ("fsync", "syncfs")
DEFAULT_SPILL_THRESHOLD = 256 * 1024

_pid = os.getpid()
_committer_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _pid, _committer_lock
    _pid = os.getpid()
    _committer_lock = threading.Lock()  # the parent may have held the old one


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    tmp_removed: int
    to_incoming: int
    to_deferred: int
    to_corrupt: int
    retired_to_free: int = 0


class Spool:
    """The on-disk queue rooted at `root` (created if missing)."""

    def __init__(self, root: str | os.PathLike[str], *,
                 spill_threshold: int = DEFAULT_SPILL_THRESHOLD,
                 sync_mode: str = "fsync",
                 fsync_threads: int = 1,
                 reuse_files: int = DEFAULT_LIMIT,
                 deferred_rescan_interval: float = 60.0) -> None:
        if sync_mode not in SYNC_MODES:
            raise ValueError(f"sync_mode must be one of {', '.join(SYNC_MODES)}, got {sync_mode!r}")
        if fsync_threads < 1:
            raise ValueError(f"fsync_threads must be at least 1, got {fsync_threads}")
        if spill_threshold <= 0:
            raise ValueError(f"spill_threshold must be positive, got {spill_threshold}")
        self.root = Path(root)
        self.root_str = os.path.abspath(root)
        self.spill_threshold = spill_threshold
        self.sync_mode = sync_mode
        self.fsync_threads = fsync_threads
        self.tmp_dir = f"{self.root_str}/tmp"
        self.incoming_dir = f"{self.root_str}/incoming"
        self.active_dir = f"{self.root_str}/active"
        self.deferred_dir = f"{self.root_str}/deferred"
        self.hold_dir = f"{self.root_str}/hold"
        self.corrupt_dir = f"{self.root_str}/corrupt"
        # Called at "written", "synced", "renamed", "dir_synced" with the queue id, in the
        # commit threads: lets crash tests stop a process at each step.  None in production.
        self.pause_hook: PauseHook | None = None
        self.committed_batches = 0  # directory fsyncs done by this process
        self.committed_messages = 0
        self.pool = FilePool(self, reuse_files)
        self.incoming_fd = self._make_directories()
        self._commit_thread: GroupCommitter | None = None
        self._claimer = Claimer(self, deferred_rescan_interval)

    def _make_directories(self) -> int:
        """Create what is missing; return an fd of incoming/ (fsynced once per batch)."""
        created = False
        try:
            os.makedirs(self.root_str, mode=0o700, exist_ok=True)
            for name in ("tmp", *QUEUES, "retired", "free"):
                try:
                    os.mkdir(f"{self.root_str}/{name}", 0o700)
                    created = True
                except FileExistsError:
                    pass
            if created:
                fsync_directory(self.root_str)
            return os.open(self.incoming_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool in {self.root_str}: {describe_os_error(exc)}") from exc

    def path(self, queue: str, queue_id: str) -> str:
        return f"{self.root_str}/{queue}/{queue_id}"

    # --- receive side --------------------------------------------------------------

    def new_message(self, envelope: Envelope) -> MessageWriter:
        """Start a message; write the Received header and data to it, then commit.
        Every recipient starts PENDING (their state fields are not read here)."""
        queue_id, arrival = new_queue_id()
        line = encode_envelope(envelope, queue_id, arrival)
        return MessageWriter(self, queue_id, arrival, line, len(envelope.recipients))

    def enqueue(self, envelope: Envelope, content: bytes | Iterable[bytes]) -> str:
        """Queue a message durably without an event loop (bounces); returns its id."""
        writer = self.new_message(envelope)
        try:
            if isinstance(content, (bytes, bytearray, memoryview)):
                writer.write(content)
            else:
                for chunk in content:
                    writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        writer.commit_sync()
        return writer.queue_id

    @property
    def closed(self) -> bool:
        return self.incoming_fd < 0

    def _committer(self) -> GroupCommitter:
        if self.closed:
            raise SpoolError(f"spool {self.root_str} is closed; the server is shutting down")
        committer = self._commit_thread
        if committer is None or committer.pid != _pid:
            with _committer_lock:
                committer = self._commit_thread
                if committer is None or committer.pid != _pid:
                    committer = GroupCommitter(self, _pid)
                    self._commit_thread = committer
        return committer

    def close(self) -> None:
        """Finish pending commits and stop this process's commit thread."""
        committer, self._commit_thread = self._commit_thread, None
        if committer is not None and committer.pid == _pid:
            committer.close()
        if self.incoming_fd >= 0:
            os.close(self.incoming_fd)
            self.incoming_fd = -1

    # --- delivery side ---------------------------------------------------------------

    def claim_next(self, now: float | None = None) -> ActiveMessage | None:
        """The next message to deliver (new, or deferred and due at `now`), or None."""
        return self._claimer.claim_next(now)

    def claim(self, queue_id: str) -> ActiveMessage | None:
        """Claim a given message from incoming/ or deferred/; None if it is not there."""
        if not is_queue_id(queue_id):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return self._claimer.claim(queue_id)

    def open_message(self, queue_id: str) -> tuple[str, MessageFile]:
        """Open a message read-only wherever it is; returns (queue, file)."""
        normal = normalise_queue_id(queue_id)
        if normal is None:
            raise MessageNotFoundError(f"{queue_id!r} is not a queue id; `fastmta queue list` shows them")
        for _ in range(3):  # it may move between queues while we look
            for queue in QUEUES:
                path = self.path(queue, normal)
                try:
                    fd, parsed = open_message_file(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise SpoolError(f"cannot read {path}: {describe_os_error(exc)}") from exc
                return queue, MessageFile(fd, path, parsed)
        raise MessageNotFoundError(f"no message {normal} in the queue; `fastmta queue list` shows the ids")

    def move_to_corrupt(self, path: str, name: str, reason: str) -> None:
        """Set a file that does not parse aside, and say so in the log."""
        target = f"{self.corrupt_dir}/{name}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("queue file %s is corrupt (%s) and cannot be moved to corrupt/: %s",
                      path, reason, describe_os_error(exc))
            return
        log.error("queue file %s is corrupt (%s); moved to %s for inspection, not delivered",
                  name, reason, target)

    # --- start-up --------------------------------------------------------------------

    def recover(self, now: float | None = None, verify_queued: bool = False) -> RecoveryReport:
        """Clean up after a crash; call once before any worker starts.

        tmp/ files were never acknowledged: removed.  active/ files lost their worker:
        back to deferred/ if their mtime is in the future (a defer was under way), else
        to incoming/.  A file that does not parse goes to corrupt/.  With
        `verify_queued`, incoming/, deferred/ and hold/ files are parsed too."""
        moment = time.time() if now is None else now
        tmp_removed = to_incoming = to_deferred = to_corrupt = 0
        for name in _list(self.tmp_dir):
            try:
                os.unlink(f"{self.tmp_dir}/{name}")
                tmp_removed += 1
            except FileNotFoundError:
                pass
        for name in _list(self.active_dir):
            path = f"{self.active_dir}/{name}"
            mtime = self._inspect(path, name)
            if mtime is None:
                to_corrupt += 1
            elif mtime > moment:
                _rename(path, f"{self.deferred_dir}/{name}")
                to_deferred += 1
            else:
                _rename(path, f"{self.incoming_dir}/{name}")
                to_incoming += 1
        if verify_queued:
            for queue in ("incoming", "deferred", "hold"):
                for name in _list(f"{self.root_str}/{queue}"):
                    if self._inspect(self.path(queue, name), name) is None:
                        to_corrupt += 1
        for directory in (self.tmp_dir, self.active_dir, self.incoming_dir, self.deferred_dir,
                          self.hold_dir, self.corrupt_dir):
            fsync_directory(directory)
        try:
            retired_to_free = self.pool.recover()
        except OSError as exc:
            raise SpoolError(f"cannot recover the spool files kept for reuse in {self.root_str}: "
                             f"{describe_os_error(exc)}") from exc
        self._claimer.forget()
        report = RecoveryReport(tmp_removed, to_incoming, to_deferred, to_corrupt, retired_to_free)
        if tmp_removed or to_incoming or to_deferred or to_corrupt:
            log.warning("spool recovery: %d unacknowledged tmp files removed, %d active messages "
                        "returned to incoming, %d to deferred, %d corrupt files moved to corrupt/",
                        tmp_removed, to_incoming, to_deferred, to_corrupt)
        return report

    def _inspect(self, path: str, name: str) -> float | None:
        """The file's mtime if it parses; otherwise move it to corrupt/ and return None."""
        if not is_queue_id(name):
            self.move_to_corrupt(path, name, "the file name is not a queue id")
            return None
        try:
            fd, parsed = open_message_file(path)
        except SpoolCorruptError as exc:
            self.move_to_corrupt(path, name, str(exc))
            return None
        except OSError as exc:
            raise SpoolError(f"cannot read {path}: {describe_os_error(exc)}") from exc
        try:
            mtime = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        if parsed.queue_id != name:
            self.move_to_corrupt(path, name, f"it holds message {parsed.queue_id}, not {name}")
            return None
        return mtime


def _rename(source: str, target: str) -> None:
    try:
        os.rename(source, target)
    except OSError as exc:
        raise SpoolError(f"cannot move {source} to {target}: {describe_os_error(exc)}") from exc


def _list(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as exc:
        raise SpoolError(f"cannot list {directory}: {describe_os_error(exc)}") from exc
