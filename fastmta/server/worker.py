"""The receive worker process: one uvloop loop serving SMTP on sockets it inherited.

`run_receive_worker(config, sockets)` is the entry point of a forked receive worker
(fastmta.process.children calls it after dropping privileges); it also works on its
own, given listening sockets.  Signals, as seen by a worker:
- SIGTERM or SIGINT: stop accepting at once (close this process's listening
  sockets), let open sessions finish for `config.drain_timeout` seconds, then 421
  the rest and return 0.  A session waiting for a commit is never cut: a message
  the spool accepted is durable whether or not its 250 went out.
- SIGHUP: ignored; on reload the master starts new workers and SIGTERMs this one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import Callable

import uvloop

from fastmta import metrics
from fastmta.config import Config
from fastmta.process import logsetup
from fastmta.server.service import ReceiveService

log = logging.getLogger("fastmta.smtpd")


def run_receive_worker(config: Config, sockets: list[socket.socket], *,
                       tls_context: ssl.SSLContext | None = None,
                       on_ready: Callable[[], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, drain, return 0 (the process's exit status)."""
    return uvloop.run(serve_until_stopped(config, sockets, tls_context=tls_context,
                                          on_ready=on_ready))


async def serve_until_stopped(config: Config, sockets: list[socket.socket], *,
                              tls_context: ssl.SSLContext | None = None,
                              on_ready: Callable[[], None] | None = None,
                              stop: asyncio.Event | None = None) -> int:
    """The worker's body on a running loop; `stop` (or SIGTERM/SIGINT) ends it."""
    loop = asyncio.get_running_loop()
    stop_event = stop if stop is not None else asyncio.Event()

    def on_signal(signum: int) -> None:
        if not stop_event.is_set():
            log.info("%s: stopping; open sessions may finish within %gs",
                     signal.Signals(signum).name, config.drain_timeout)
        stop_event.set()

    if stop is None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    service = ReceiveService(config, loop, tls_context=tls_context)
    metrics.start_flushing(loop)
    logsetup.batch_writes(loop)  # one write(2) per loop iteration for the session lines
    try:
        await service.start(sockets)
        if on_ready is not None:
            on_ready()
        log.info("receive worker serving %d listening sockets", len(sockets))
        await stop_event.wait()
        await service.drain(config.drain_timeout)
        log.info("receive worker done: %d messages accepted", service.accepted)
    finally:
        service.spool.close()
        metrics.flush()
        logsetup.batch_writes(None)  # writes what is pending: the process exits next
    return 0
