"""Which delivery worker owns a file in active/, and returning the files of dead ones.

The rename into active/ makes a worker the owner (fastmta.spool.claim); right after it,
the worker takes an flock on the file (`hold`) and keeps it until the message leaves
active/.  The kernel drops the lock when the worker dies, however it dies, so an
active/ file that nobody holds belongs to a dead worker: `recover_orphans` (run by every
worker now and then) returns it to the queue, with every recipient state it recorded.
The master's start-up `Spool.recover()` does the same for all of active/, but only at
start-up; this covers a delivery worker that dies while the master lives on.

Cost: one flock(2) per message (about 2 us with its implicit unlock at close, measured);
a per-worker lock with the pid in active/ names would save that much and change the
spool's layout, which the master's recovery, the queue CLI and claims by id rely on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time

from fastmta.spool import ActiveMessage, Spool, SpoolError

__all__ = ["ORPHAN_MIN_AGE", "ORPHAN_SCAN_INTERVAL", "hold", "recover_orphans"]

log = logging.getLogger("fastmta.delivery")

ORPHAN_MIN_AGE = 5.0  # seconds since the claim before an unlocked active/ file counts as orphaned
ORPHAN_SCAN_INTERVAL = 60.0


def hold(message: ActiveMessage) -> bool:
    """Hold the message's flock while we own it (see recover_orphans); if an orphan scan
    holds it right now, give the message back for later."""
    try:
        fcntl.flock(message.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        with contextlib.suppress(SpoolError):
            message.release()
        return False


def recover_orphans(spool: Spool, now: float | None = None, min_age: float = ORPHAN_MIN_AGE
                    ) -> tuple[int, int]:
    """Return active/ files that no live worker holds to the queue; (returned, too young).

    An owner holds an flock from just after its claim until it lets go, and the kernel
    drops the lock when the owner dies.  A file whose last rename is younger than
    `min_age` may have been claimed a moment ago by a worker not yet holding the lock,
    so it is left for a later scan."""
    moment = time.time() if now is None else now
    returned = young = 0
    try:
        names = os.listdir(spool.active_dir)
    except OSError as exc:
        log.error("cannot list %s to find orphaned messages: %s", spool.active_dir, exc)
        return 0, 0
    for name in sorted(names):
        path = f"{spool.active_dir}/{name}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # finished or moved meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # a live worker owns it
                raise
            info = os.fstat(fd)
            try:
                if os.stat(path).st_ino != info.st_ino:
                    continue  # replaced meanwhile
            except FileNotFoundError:
                continue
            if moment - info.st_ctime < min_age:
                young += 1
                continue
            target = "deferred" if info.st_mtime > moment else "incoming"
            os.rename(path, spool.path(target, name))
            returned += 1
            log.warning("message %s was left in active/ by a delivery worker that died; "
                        "returned to %s/ (recipients already done are not redelivered)",
                        name, target)
        except OSError as exc:
            log.error("cannot return orphaned message %s to the queue: %s", name, exc)
        finally:
            os.close(fd)
    return returned, young
