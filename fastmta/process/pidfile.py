"""The master's pid file (--pid-file): written at start, removed at exit.

Invariants:
- Start-up is refused while the file names a live process: a second master on the
  same spool would run recovery under the feet of the first one's workers.
- A file left by a dead master (stale) is replaced, and the log says so.
- The file is created with O_EXCL, so two masters starting together cannot both win;
  it is removed at exit only if it still holds our pid.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("fastmta.master")


class PidFileError(Exception):
    """The pid file cannot be taken; the text says why and what to do."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid: int | None = None

    def acquire(self) -> None:
        """Write our pid, or raise PidFileError if another live process holds the file."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            except OSError as exc:
                raise PidFileError(f"cannot create pid file {self.path}: {exc.strerror}; check "
                                   "that its directory exists and is writable") from None
            pid = os.getpid()
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{pid}\n")
            self.pid = pid
            return
        raise PidFileError(f"pid file {self.path} keeps reappearing; is another fastmta "
                           "starting at the same time?")

    def _clear_stale(self) -> None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PidFileError(f"cannot read pid file {self.path}: {exc.strerror}") from None
        if text.isdigit() and int(text) != os.getpid() and _running(int(text)):
            raise PidFileError(f"pid file {self.path} names process {text}, which is running: "
                               "fastmta is already running (stop it first); if that process is "
                               "not fastmta, remove the file")
        log.warning("removing stale pid file %s (process %s is gone)", self.path, text or "?")
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.pid is None:
            return
        try:
            if self.path.read_text().strip() == str(self.pid):
                self.path.unlink()
        except OSError:
            pass
        self.pid = None
