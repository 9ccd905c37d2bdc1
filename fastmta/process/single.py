"""`--workers 0`: receive and deliver in the master process, in one uvloop loop.

For debugging (one pid to attach a debugger or py-spy to) and for tiny sites.  The
same signals as the pre-forked model: SIGTERM/SIGINT drain and stop; SIGHUP builds a
new receive service on duplicates of the listening sockets, then drains the old one,
and restarts delivery with the new config.  Privileges are dropped once the sockets
are bound, before the first client is served.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvloop

from fastmta import metrics
from fastmta.config import Config
from fastmta.process.metrics_http import MetricsServer, WorkerStatus
from fastmta.process.privileges import Identity, drop_privileges
from fastmta.process.supervisor import socket_name
from fastmta.server.service import ReceiveService

log = logging.getLogger("fastmta.master")


def serve_single(config: Config, sockets: list[socket.socket], *,
                 tls_context: ssl.SSLContext | None, identity: Identity | None,
                 reload_config: Callable[[Config], tuple[Config, ssl.SSLContext | None]],
                 metrics_socket: socket.socket | None, metrics_dir: str | None) -> int:
    if identity is not None:
        drop_privileges(identity)
    return uvloop.run(_Single(config, sockets, tls_context, reload_config, metrics_socket,
                              metrics_dir).run())


class _LoopSelector:
    """The few selector methods MetricsServer uses, on an asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def register(self, fileobj: Any, events: int, data: Callable[[int], None]) -> None:
        if events & selectors.EVENT_READ:
            self.loop.add_reader(fileobj, data, selectors.EVENT_READ)
        if events & selectors.EVENT_WRITE:
            self.loop.add_writer(fileobj, data, selectors.EVENT_WRITE)

    def modify(self, fileobj: Any, events: int, data: Callable[[int], None]) -> None:
        self.unregister(fileobj)
        self.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> None:
        self.loop.remove_reader(fileobj)
        self.loop.remove_writer(fileobj)


class _Single:
    def __init__(self, config: Config, sockets: list[socket.socket],
                 tls_context: ssl.SSLContext | None,
                 reload_config: Callable[[Config], tuple[Config, ssl.SSLContext | None]],
                 metrics_socket: socket.socket | None, metrics_dir: str | None) -> None:
        self.config = config
        self.sockets = sockets  # the master's copies; each service gets duplicates
        self.tls_context = tls_context
        self.reload_config = reload_config
        self.metrics_socket = metrics_socket
        self.metrics_dir = metrics_dir
        self.stop = asyncio.Event()
        self.services: set[_Running] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.delivery: DeliveryRunner | None = None
        self.current: _Running  # the service accepting now (set by _start_service)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        metrics.start_flushing(loop)
        server = self._start_metrics(loop)
        await self._start_service(self.config, self.tls_context)
        self.delivery = DeliveryRunner(self.config)
        log.info("fastmta ready (single process): receiving on %s, delivering: %s",
                 ", ".join(socket_name(sock) for sock in self.sockets),
                 "yes" if self.delivery.running else "no")
        await self.stop.wait()
        while self.tasks:  # a reload under way may still add a service: stop that too
            for running in list(self.services):
                running.stop.set()
            await asyncio.wait(set(self.tasks))
        await self.delivery.stop()
        if server is not None:
            server.close()
        metrics.flush()
        log.info("stopped")
        return 0

    def _on_stop(self, signum: int) -> None:
        if not self.stop.is_set():
            log.info("%s: stopping; open sessions may finish within %gs",
                     signal.Signals(signum).name, self.config.drain_timeout)
        self.stop.set()

    def _on_reload(self) -> None:
        if self.stop.is_set():
            return
        log.info("SIGHUP: reloading the configuration")
        try:
            config, tls_context = self.reload_config(self.config)
        except Exception as exc:  # noqa: BLE001 (any failure: log it, keep serving)
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self._track(asyncio.get_running_loop().create_task(self._swap(config, tls_context)))

    async def _swap(self, config: Config, tls_context: ssl.SSLContext | None) -> None:
        old = self.current
        if self.stop.is_set():
            return
        try:
            await self._start_service(config, tls_context)
        except Exception as exc:  # noqa: BLE001 (any failure: log it, keep serving)
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        old.stop.set()  # stops accepting on its duplicates; its sessions drain
        self.config, self.tls_context = config, tls_context
        if self.delivery is not None:
            await self.delivery.stop()
        if not self.stop.is_set():
            self.delivery = DeliveryRunner(config)
            log.info("reload done")

    async def _start_service(self, config: Config,
                             tls_context: ssl.SSLContext | None) -> _Running:
        loop = asyncio.get_running_loop()
        running = _Running(ReceiveService(config, loop, tls_context=tls_context))
        await running.service.start([sock.dup() for sock in self.sockets])
        self.services.add(running)
        task = self._track(loop.create_task(running.serve(config.drain_timeout)))
        task.add_done_callback(lambda _task: self.services.discard(running))
        self.current = running
        return running

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _start_metrics(self, loop: asyncio.AbstractEventLoop) -> MetricsServer | None:
        if self.metrics_socket is None or self.metrics_dir is None:
            return None
        from fastmta.process.metrics_http import build_registry, render

        def status() -> list[WorkerStatus]:
            workers = [WorkerStatus("receive", 0, True, 0)]
            if self.delivery is not None and self.delivery.running:
                workers.append(WorkerStatus("delivery", 0, True, 0))
            return workers

        registry = build_registry(self.metrics_dir, str(self.config.spool), status)
        server = MetricsServer(self.metrics_socket, _LoopSelector(loop),  # type: ignore[arg-type]
                               lambda: render(registry))

        def expire() -> None:
            server.expire(loop.time())
            loop.call_later(1.0, expire)

        loop.call_later(1.0, expire)
        log.info("metrics on http://%s/metrics", server.address)
        return server


class _Running:
    """One receive service and the event that drains it."""

    def __init__(self, service: ReceiveService) -> None:
        self.service = service
        self.stop = asyncio.Event()

    async def serve(self, drain_timeout: float) -> None:
        await self.stop.wait()
        await self.service.drain(drain_timeout)
        self.service.spool.close()


class DeliveryRunner:
    """The delivery side in this loop (fastmta.delivery.worker), while it runs."""

    def __init__(self, config: Config) -> None:
        self.running = False
        self.task: asyncio.Task[Any] | None = None
        self.stop_event = asyncio.Event()
        if config.delivery_workers == 0:
            return
        try:
            from fastmta.delivery.worker import deliver_until_stopped
        except ImportError:
            log.error("delivery is not available in this build (fastmta.delivery.worker); "
                      "messages stay queued")
            return
        self.task = asyncio.get_running_loop().create_task(
            deliver_until_stopped(config, self.stop_event))
        self.running = True

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            await self.task
        self.running = False
