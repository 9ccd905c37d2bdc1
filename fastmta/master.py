"""The `fastmta serve` process: bind, then serve (single-process for now; pre-fork in issue 4)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from fastmta.config import Config
from fastmta.server.service import ReceiveService, bind_listeners

log = logging.getLogger("fastmta.master")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d]: %(message)s")


def serve(config: Config) -> int:
    setup_logging()
    try:
        sockets = bind_listeners(config)
    except OSError as exc:
        print(f"fastmta: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return uvloop.run(_serve_in_process(config, sockets))


async def _serve_in_process(config: Config, sockets: list) -> int:
    loop = asyncio.get_running_loop()
    service = ReceiveService(config, loop)
    await service.start(sockets)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("fastmta ready on %s (spool %s)", ", ".join(config.listen), config.spool)
    await stop.wait()
    log.info("stopping: draining open sessions (up to %.0fs)", config.drain_timeout)
    await service.drain(config.drain_timeout)
    service.spool.close()
    return 0
