"""The master's `--metrics HOST:PORT` endpoint: Prometheus text format over plain HTTP.

`build_registry` sums the per-process files the workers write (prometheus_client's
multiprocess mode, see fastmta.metrics), and adds what only the master knows, counted
at scrape time: spool depth per queue and worker liveness and restarts.

`MetricsServer` is a small non-blocking HTTP/1.0 server driven by the master's
selector loop: the master forks, so it must not run threads (prometheus_client's own
server is a thread).  Invariants: one request per connection; a request head is at
most 8 KiB and must arrive within `CLIENT_TIMEOUT`; at most `MAX_CLIENTS` at once; a
slow or broken client never blocks the master.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastmta.config import parse_hostport
from fastmta.spool import QUEUES

log = logging.getLogger("fastmta.master")

CLIENT_TIMEOUT = 10.0
MAX_CLIENTS = 32
MAX_REQUEST_HEAD = 8192


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    role: str  # "receive" or "delivery"
    slot: int
    up: bool
    restarts: int


class SpoolDepthCollector:
    """fastmta_spool_messages{queue}: files per spool directory, counted when scraped."""

    def __init__(self, spool_root: str) -> None:
        self.spool_root = spool_root

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("fastmta_spool_messages", "messages in each spool directory "
                                   "(tmp: being received now)", labels=["queue"])
        for queue in ("tmp", *QUEUES):
            count = 0
            try:
                with os.scandir(os.path.join(self.spool_root, queue)) as entries:
                    for _ in entries:
                        count += 1
            except OSError:
                continue  # no sample rather than a wrong zero
            family.add_metric([queue], count)
        yield family


class WorkerCollector:
    """fastmta_worker_up{role,slot} and fastmta_worker_restarts_total{role,slot}."""

    def __init__(self, status: Callable[[], list[WorkerStatus]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("fastmta_worker_up", "1 while the worker process of this slot "
                               "is running", labels=["role", "slot"])
        restarts = CounterMetricFamily("fastmta_worker_restarts", "times the worker of this "
                                       "slot died and was replaced", labels=["role", "slot"])
        for worker in self.status():
            labels = [worker.role, str(worker.slot)]
            up.add_metric(labels, 1.0 if worker.up else 0.0)
            restarts.add_metric(labels, worker.restarts)
        yield up
        yield restarts


def build_registry(multiproc_dir: str, spool_root: str,
                   status: Callable[[], list[WorkerStatus]]) -> Any:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)
    registry.register(SpoolDepthCollector(spool_root))
    registry.register(WorkerCollector(status))
    return registry


def render(registry: Any) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)


def bind_metrics(address: str) -> socket.socket:
    """Listen on HOST:PORT for scrapes; OSError names the address."""
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen for metrics on {address}: {exc.strerror}; "
                                 "is another program using that port?") from None
    return sock


class _Client:
    __slots__ = ("deadline", "inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = memoryview(b"")
        self.deadline = deadline


class MetricsServer:
    """Serves GET /metrics on `sock` from `selector`; the master calls `expire()` often."""

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector,
                 body: Callable[[], bytes]) -> None:
        self.sock = sock
        self.selector = selector
        self.body = body
        self.clients: dict[int, _Client] = {}
        selector.register(sock, selectors.EVENT_READ, self._accept)

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        self.selector.unregister(self.sock)
        self.sock.close()

    def close_in_child(self) -> None:
        """Close the sockets in a forked child, leaving the (shared) selector alone."""
        for client in self.clients.values():
            client.sock.close()
        self.sock.close()

    def expire(self, now: float) -> None:
        for client in [c for c in self.clients.values() if c.deadline <= now]:
            self._drop(client)

    def _accept(self, _mask: int) -> None:
        while True:
            try:
                conn, _peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("metrics endpoint: accept failed: %s", exc.strerror)
                return
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            client = _Client(conn, time.monotonic() + CLIENT_TIMEOUT)
            self.clients[conn.fileno()] = client
            self.selector.register(conn, selectors.EVENT_READ, lambda mask, c=client: self._io(c))

    def _io(self, client: _Client) -> None:
        try:
            if client.outbox:
                self._send(client)
                return
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._drop(client)
            return
        client.inbox += data
        if b"\r\n\r\n" not in client.inbox and b"\n\n" not in client.inbox:
            if len(client.inbox) > MAX_REQUEST_HEAD:
                self._respond(client, 431, "Request Header Fields Too Large", b"")
            return
        status, reason, body = self._answer(client.inbox)
        self._respond(client, status, reason, body, head_only=client.inbox.startswith(b"HEAD "))

    def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, "Bad Request", b"send: GET /metrics HTTP/1.1\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, "Method Not Allowed", b"only GET /metrics\n"
        if target not in (b"/metrics", b"/"):
            return 404, "Not Found", b"metrics are at /metrics\n"
        try:
            body = self.body()
        except Exception:
            log.exception("metrics endpoint: collecting the metrics failed")
            return 500, "Internal Server Error", b"collecting the metrics failed; see the log\n"
        return 200, "OK", body

    def _respond(self, client: _Client, status: int, reason: str, body: bytes,
                 head_only: bool = False) -> None:
        # The classic text format (0.0.4): what generate_latest writes for our plain
        # names, and what every Prometheus version and scraper understands.
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

        kind = CONTENT_TYPE_PLAIN_0_0_4 if status == 200 else "text/plain; charset=utf-8"
        head = (f"HTTP/1.0 {status} {reason}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
        client.outbox = memoryview(head if head_only else head + body)
        self.selector.modify(client.sock, selectors.EVENT_WRITE,
                             lambda mask, c=client: self._io(c))
        self._send(client)

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
