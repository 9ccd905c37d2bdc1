"""Commit a batch of new spool files (pure-Python twin of fastmta._ext.spoolio).

`commit_files(jobs, dir_fd, use_syncfs=False, reuse=None)` does, for every job of a
batch, the system calls that make a received message durable in the queue, and tells
per job how far it got.  A job is `(fd, tmp_path, final_path, parts, head)`:

- `fd`: the file's descriptor if it is already open (a spilled message), else -1 and
  the file is made at `tmp_path`: from the next path of `reuse` that can be renamed
  there (renameat2 RENAME_NOREPLACE; a spool file kept after delivery: opened O_WRONLY,
  overwritten from offset 0 and cut to its new length), else created (O_CREAT|O_EXCL,
  mode 0600).  Either way a file already at `tmp_path` fails the job with EEXIST.  `reuse` is a
  list of bytes paths; the paths tried (taken or missing) are deleted from its front;
- `parts`: a list of bytes written in order (writev, resumed after short writes);
- `head`: bytes written at offset 0 afterwards (the final preamble of a spilled
  file), or None.

Then: fsync the file (unless `use_syncfs`), close it, and once every file is written:
one syncfs(2) of the file system (if `use_syncfs`), rename each good `tmp_path` to
`final_path`, and one fsync of `dir_fd` for all the renames.

Returns one `(errno, stage)` per job: `(0, COMMITTED)`, or the error and where the
file was left: `NOT_CREATED` (nothing created by this call), `IN_TMP` (the file is
at `tmp_path`), `PUBLISHED` (renamed, but the directory fsync failed: it is at
`final_path`, not durably).  The caller removes what a failed job left.

Invariants (the compiled twin keeps the same ones with the GIL released once):
- A file is renamed only after its data reached the disk (fsync or syncfs).
- A reused file holds exactly the job's bytes: nothing of its old content past them.
- Every descriptor, given or opened, is closed when the call returns.
- One directory fsync covers every rename of the batch; none if nothing was renamed.
- A malformed job (paths, parts or head not bytes) raises TypeError before any
  system call.
"""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["COMMITTED", "IN_TMP", "NOT_CREATED", "PUBLISHED", "commit_files"]

COMMITTED = 0
NOT_CREATED = 1
IN_TMP = 2
PUBLISHED = 3

_IOV_MAX = 1024  # Linux UIO_MAXIOV
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_REUSE_FLAGS = os.O_WRONLY | os.O_CLOEXEC

Job = tuple[int, bytes, bytes, list[bytes], "bytes | None"]


def _write_all(fd: int, parts: list[bytes]) -> None:
    views = [memoryview(part) for part in parts if part]  # writev of only empty parts returns 0
    start = 0
    while start < len(views):
        written = os.writev(fd, views[start:start + _IOV_MAX])
        if written == 0:
            raise OSError(errno.EIO, "write made no progress")
        while start < len(views) and written >= len(views[start]):
            written -= len(views[start])
            start += 1
        if written:
            views[start] = views[start][written:]


def open_new_file(tmp_path: bytes, reuse: list[bytes] | None) -> tuple[int, bool]:
    """Make the file `tmp_path` for writing from offset 0: the first path of `reuse` that
    can be renamed to it (deleted from `reuse` with the ones that could not), else a new
    file.  Returns (fd, reused).  Raises OSError with `stage` NOT_CREATED or IN_TMP."""
    while reuse:
        candidate = reuse.pop(0)
        failure = _rename_noreplace(candidate, tmp_path)
        if failure == errno.EEXIST:  # as O_EXCL: never replace a file at tmp_path
            error = OSError(failure, os.strerror(failure))
            error.stage = NOT_CREATED  # type: ignore[attr-defined]
            raise error
        if failure in (errno.EINVAL, errno.ENOSYS):
            break  # the file system cannot rename without replacing: create instead
        if failure:
            continue  # another process took it, or it is gone: the next one
        try:
            return os.open(tmp_path, _REUSE_FLAGS), True
        except OSError as exc:
            exc.stage = IN_TMP  # type: ignore[attr-defined]
            raise
    try:
        return os.open(tmp_path, _CREATE_FLAGS, 0o600), False
    except OSError as exc:
        exc.stage = NOT_CREATED  # type: ignore[attr-defined]
        raise


def _write_file(fd: int, tmp_path: bytes, parts: list[bytes], head: bytes | None,
                use_syncfs: bool, reuse: list[bytes] | None) -> tuple[int, int]:
    reused = False
    if fd < 0:
        try:
            fd, reused = open_new_file(tmp_path, reuse)
        except OSError as exc:
            return exc.errno or errno.EIO, exc.stage  # type: ignore[attr-defined]
    failure = 0
    try:
        _write_all(fd, parts)
        if head is not None:
            written = os.pwrite(fd, head, 0)
            if written != len(head):
                raise OSError(errno.EIO, "short write of the preamble")
        if reused:
            os.ftruncate(fd, max(sum(map(len, parts)), 0 if head is None else len(head)))
        if not use_syncfs:
            os.fsync(fd)
    except OSError as exc:
        failure = exc.errno or errno.EIO
    try:
        os.close(fd)
    except OSError as exc:
        failure = failure or exc.errno or errno.EIO
    return failure, IN_TMP if failure else COMMITTED


def commit_files(jobs: list[Job], dir_fd: int, use_syncfs: bool = False,
                 reuse: list[bytes] | None = None) -> list[tuple[int, int]]:
    """Write, sync, rename every job's file; one directory fsync; see the module docstring."""
    for job in jobs:
        _check(job)
    if reuse is not None and (type(reuse) is not list or any(type(path) is not bytes for path in reuse)):
        raise TypeError("reuse must be a list of bytes paths")
    results = [_write_file(fd, tmp_path, parts, head, use_syncfs, reuse)
               for fd, tmp_path, _, parts, head in jobs]
    live = [index for index, (failure, _) in enumerate(results) if not failure]
    if live and use_syncfs:
        try:
            syncfs(dir_fd)
        except OSError as exc:
            for index in live:
                results[index] = (exc.errno or errno.EIO, IN_TMP)
            live = []
    renamed = []
    for index in live:
        _, tmp_path, final_path, _, _ = jobs[index]
        try:
            os.rename(tmp_path, final_path)
            renamed.append(index)
        except OSError as exc:
            results[index] = (exc.errno or errno.EIO, IN_TMP)
    if renamed:
        try:
            os.fsync(dir_fd)
        except OSError as exc:
            for index in renamed:
                results[index] = (exc.errno or errno.EIO, PUBLISHED)
    return results


def _check(job: Job) -> None:
    if type(job) is not tuple or len(job) != 5:
        raise TypeError("a job is (fd, tmp_path, final_path, parts, head)")
    fd, tmp_path, final_path, parts, head = job
    if type(fd) is not int:
        raise TypeError("the fd of a job must be an int")
    if type(tmp_path) is not bytes or type(final_path) is not bytes:
        raise TypeError("the paths of a job must be bytes")
    if type(parts) is not list or any(type(part) is not bytes for part in parts):
        raise TypeError("the parts of a job must be bytes")
    if head is not None and type(head) is not bytes:
        raise TypeError("the head of a job must be bytes or None")


_libc: ctypes.CDLL | None = None
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _rename_noreplace(source: bytes, target: bytes) -> int:
    """renameat2(RENAME_NOREPLACE), which the os module does not offer; 0 or an errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.renameat2(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_NOREPLACE) == 0:
        return 0
    return ctypes.get_errno()


def syncfs(fd: int) -> None:
    """syncfs(2), which the os module does not offer: flush every dirty page and inode of
    the file system holding `fd`.  (Not a kernel: fastmta.spool.fsutil uses it too.)"""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
