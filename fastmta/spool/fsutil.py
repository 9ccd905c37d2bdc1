"""Small file-system helpers shared by the spool modules.

`describe_os_error` turns an OSError into text that names the errno and says what an
operator should do; every SpoolError built from an OSError uses it.
"""

from __future__ import annotations

import errno
import os

from fastmta._pure.spoolio import syncfs  # the one syncfs(2) wrapper (no kernel choice needed)

__all__ = ["describe_os_error", "fsync_directory", "syncfs", "write_all"]

_IOV_MAX = 1024  # Linux UIO_MAXIOV

_ADVICE = {
    errno.ENOSPC: "free disk space on the spool's file system",
    errno.EDQUOT: "raise the disk quota of the fastmta user or free space",
    errno.EIO: "check the disk and the kernel log (dmesg)",
    errno.EROFS: "remount the spool's file system read-write",
    errno.EACCES: "make the spool directories writable by the fastmta user",
    errno.EPERM: "make the spool directories writable by the fastmta user",
    errno.EMFILE: "raise the open file limit (ulimit -n)",
    errno.ENFILE: "raise the system-wide open file limit (fs.file-max)",
}


def describe_os_error(exc: BaseException) -> str:
    """"No space left on device (ENOSPC); free disk space ..." for an OSError."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        advice = _ADVICE.get(exc.errno, "check the spool directory and its file system")
        return f"{exc.strerror or exc} ({name}); {advice}"
    return f"{exc!r}; this is a fastmta bug, please report it"


def write_all(fd: int, parts: list[bytes | memoryview]) -> None:
    """writev every part, resuming after short writes (a disk filling up)."""
    start = 0
    while start < len(parts):
        batch = parts[start:start + _IOV_MAX]
        written = os.writev(fd, batch)
        if written == 0:
            raise OSError(errno.EIO, "write made no progress")
        for part in batch:
            if written >= len(part):
                written -= len(part)
                start += 1
            else:
                parts[start] = memoryview(part)[written:]
                break


def fsync_directory(directory: str) -> None:
    """Make the renames and unlinks done in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
