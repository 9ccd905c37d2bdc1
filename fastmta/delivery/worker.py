"""The delivery worker's entry points: a forked process, or a task in the master's loop.

- `run_delivery_worker(config)`: the body of a forked delivery worker (called by
  fastmta.process.children after privileges are dropped).  Runs the queue manager on
  uvloop until SIGTERM (or SIGINT when run on its own), then lets the deliveries under
  way finish for up to `drain_timeout` seconds; whatever is left goes back to the queue
  with every outcome recorded so far.  Returns the exit status.
- `deliver_until_stopped(config, stop_event)`: the same on the caller's loop, until
  `stop_event` is set (`--workers 0`).

While it runs, a worker holds a shared flock on `<spool>/delivery.lock`; `delivery_running
(spool)` tries the exclusive lock to learn whether any worker serves that spool (for
`fastmta queue flush`).  The kernel drops the lock when a worker dies, so a crash never
leaves a stale marker.  Workers never call `Spool.recover()` (receive workers may be
writing tmp/ files); the master does that before it forks, and each worker returns the
active/ files of dead workers itself (`orphans.recover_orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from fastmta.config import Config
from fastmta.delivery.manager import QueueManager
from fastmta.delivery.routing import Router
from fastmta.spool import Spool

__all__ = ["RUNNING_MARKER", "deliver_until_stopped", "delivery_running", "run_delivery_worker"]

log = logging.getLogger("fastmta.delivery")

RUNNING_MARKER = "delivery.lock"


def run_delivery_worker(config: Config) -> int:
    """Deliver until SIGTERM; returns 0 (a clean stop)."""
    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await deliver_until_stopped(config, stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    return 0


async def deliver_until_stopped(config: Config, stop_event: asyncio.Event) -> None:
    """Run one queue manager over the configured spool until `stop_event` is set."""
    spool = Spool(config.spool, reuse_files=config.spool_reuse_files)
    try:
        with _running_marker(spool.root):
            router = Router(config, own_addresses=_own_addresses(config))
            manager = QueueManager(config, spool, router=router)
            log.info("delivery worker started on spool %s (Maildirs in %s)", spool.root_str,
                     config.mail_root)
            try:
                await manager.run(stop_event, drain_timeout=config.drain_timeout)
            finally:
                await manager.close()
            log.info("delivery worker stopped after %d delivery attempts", manager.attempts)
    finally:
        spool.close()


def delivery_running(spool_root: str | os.PathLike[str]) -> bool:
    """Whether a delivery worker is serving this spool right now."""
    path = Path(spool_root) / RUNNING_MARKER
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def _running_marker(root: Path) -> Iterator[None]:
    fd = os.open(root / RUNNING_MARKER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _own_addresses(config: Config) -> list[str]:
    """Addresses where a next hop on the outbound port would be ourselves (a mail loop).
    Only those: a content filter on 127.0.0.1 at another port is a legitimate next hop."""
    return [host for host, port in config.listen_addresses
            if port == config.outbound_port and host not in ("0.0.0.0", "::")]
