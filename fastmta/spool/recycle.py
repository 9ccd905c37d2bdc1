"""Spool files kept after delivery and reused for new messages, instead of unlink + create.

    active/ID --retire()--> retired/ID --release()--> free/ID
    free/ID --next commit (spoolio kernel)--> tmp/NEWID --> incoming/NEWID

A delivered message's file is renamed into retired/ (where the delivery worker used to
unlink it); the delivery worker's `release()` makes those moves durable and passes the
files on to free/; the receive side's commit renames a free/ file to its tmp/ name,
overwrites it from offset 0, cuts it to the new length, and fsyncs it as it would a
new file.  The file system then allocates and frees no inode and no block per message,
and (mounted with `discard`) trims nothing.  On ext4 without a journal, where creating
a file after many deletions costs up to 1.7 ms of CPU, that made the create-write-
fsync-delete cycle about 3x faster in one measurement (bench/README.md).

Why retired/ before free/: the renames that took the message out of incoming/ or
deferred/ (the claim) and out of active/ were not fsynced.  Were the inode overwritten
with a new message while one of those old names could still come back after a power
loss, the new message would sit under two names.  `release()` lists retired/, fsyncs
every queue directory, then moves the files it listed; recovery at start-up also takes
out of reuse a retired/ or free/ name whose inode has another name.

Bounds: at most `limit` files wait in free/ (`release()` unlinks the rest); a file over
`max_size` bytes is unlinked at once; `limit` 0 turns reuse off (plain unlinks).  A
free/ file holds a delivered message's old bytes until it is reused, readable by the
spool's owner only, as the queue files are.

One FilePool per Spool object.  `take`/`give_back` may be called from several commit
threads; `retire` from any thread; `release` from any process, one call at a time per
process (two processes releasing at once only race for renames, which one wins).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import TYPE_CHECKING

from fastmta.spool.fsutil import describe_os_error, fsync_directory

if TYPE_CHECKING:
    from fastmta.spool.core import Spool

__all__ = ["DEFAULT_LIMIT", "DEFAULT_MAX_SIZE", "FilePool"]

log = logging.getLogger("fastmta.spool")

DEFAULT_LIMIT = 2048  # files waiting in free/
DEFAULT_MAX_SIZE = 256 * 1024  # bigger files are unlinked, not kept
RELEASE_BATCH = 256  # retired files that make a release worth its directory fsyncs
_RELIST_EMPTY = 0.1  # seconds between listings of free/ while it gave nothing
_RELIST_STALE = 1.0  # seconds after which listed names are likely taken by others


class FilePool:
    """The retired/ and free/ directories of one spool."""

    def __init__(self, spool: Spool, limit: int = DEFAULT_LIMIT,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        if limit < 0:
            raise ValueError(f"the number of files kept for reuse must be 0 or more, got {limit}")
        self.limit = limit
        self.max_size = max_size
        self.retired_dir = f"{spool.root_str}/retired"
        self.free_dir = f"{spool.root_str}/free"
        self._queue_dirs = (spool.incoming_dir, spool.deferred_dir, spool.hold_dir, spool.active_dir)
        self._corrupt_dir = spool.corrupt_dir
        self._free_prefix = os.fsencode(self.free_dir) + b"/"
        self._lock = threading.Lock()
        self._names: list[bytes] = []  # free/ paths from the last listing, shuffled
        self._listed_at = -1e9
        self._retired = 0  # files this process put in retired/ since its last release
        self.tried = 0  # for measurements: free/ names the commits used up

    # --- receive side: free files for the spoolio kernel -------------------------------

    def take(self, count: int) -> list[bytes]:
        """Up to `count` free/ paths to try (another process may take one first)."""
        if self.limit == 0 or count <= 0:
            return []
        with self._lock:
            now = time.monotonic()
            age = now - self._listed_at
            if (not self._names and age >= _RELIST_EMPTY) or age >= _RELIST_STALE:
                self._names = self._list_free()
                self._listed_at = now
            names = self._names
            if not names:
                return []
            taken = names[-count:]
            del names[-count:]
            return taken

    def give_back(self, paths: list[bytes], tried: int) -> None:
        """After a commit: `paths` are those of `take` the kernel left untried (kept for
        the next one), `tried` how many it used up (taken, or found gone)."""
        self.tried += tried
        if paths:
            with self._lock:
                self._names.extend(paths)

    def _list_free(self) -> list[bytes]:
        try:
            names = [self._free_prefix + name for name in os.listdir(os.fsencode(self.free_dir))]
        except OSError as exc:
            log.warning("cannot list %s (new messages get new files): %s", self.free_dir,
                        describe_os_error(exc))
            return []
        random.shuffle(names)  # receive workers listing together take different files
        return names

    # --- delivery side -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Files this process retired since its last release."""
        return self._retired

    def retire(self, path: str, name: str, size: int) -> None:
        """Take a delivered message's file out of the queue: into retired/ to be reused,
        or unlinked when reuse is off or the file is too big.  Raises OSError."""
        if self.limit == 0 or size > self.max_size:
            os.unlink(path)
            return
        os.rename(path, f"{self.retired_dir}/{name}")
        self._retired += 1

    def release(self) -> int:
        """Pass what sits in retired/ on to free/: list it, make every queue directory
        durable (fsync: the renames that took those files out of the queue are then on
        disk), then move the listed files while free/ holds fewer than `limit`, unlinking
        the rest.  Any process may release any retired file (a killed worker's too): a
        file listed was renamed before the fsyncs.  Blocks on the disk: run it off the
        event loop.  Returns the files moved."""
        self._retired = 0
        try:
            names = os.listdir(self.retired_dir)
            if not names:
                return 0
            for directory in self._queue_dirs:
                fsync_directory(directory)
            room = self.limit - len(os.listdir(self.free_dir))
        except OSError as exc:
            log.warning("cannot release the retired spool files for reuse (check the spool's "
                        "disk; they are released again later): %s", describe_os_error(exc))
            return 0
        return self._pass_on(names, room)

    def _pass_on(self, names: list[str], room: int) -> int:
        moved = 0
        for name in names:
            source = f"{self.retired_dir}/{name}"
            try:
                if moved < room:
                    os.rename(source, f"{self.free_dir}/{name}")
                    moved += 1
                else:
                    os.unlink(source)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot move or remove %s: %s", source, describe_os_error(exc))
        return moved

    # --- start-up ------------------------------------------------------------------------

    def recover(self) -> int:
        """After a crash, with the queue directories fsynced by the caller: pass what
        sits in retired/ on to free/, and take out of reuse any retired/ or free/ name
        whose inode a queue file also has (a move a power loss undid): unlinked if the
        inode counts both names, else moved to corrupt/ for inspection.  Returns the
        files moved to free/."""
        queued = {entry.inode() for directory in self._queue_dirs for entry in _scan(directory)}
        kept: list[str] = []
        for directory, names in ((self.free_dir, None), (self.retired_dir, kept)):
            for entry in _scan(directory):
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    links = entry.stat(follow_symlinks=False).st_nlink
                    if links > 1:
                        os.unlink(entry.path)
                    elif entry.inode() in queued:
                        os.rename(entry.path, f"{self._corrupt_dir}/reuse-{entry.name}")
                        log.error("spool file %s is also a queue file; moved to corrupt/",
                                  entry.path)
                    elif names is not None:
                        names.append(entry.name)
                except FileNotFoundError:
                    pass
        room = self.limit - len(os.listdir(self.free_dir)) if self.limit else 0
        return self._pass_on(kept, room)


def _scan(directory: str) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as entries:
        return list(entries)
