"""A real fastmta receive server on 127.0.0.1 for tests, and clients that talk to it.

Two ways to run the server, both on a free port chosen by the kernel (port 0):
- `InProcessServer(tmp_path, loop="uvloop" | "asyncio", **settings)`: a
  `ReceiveService` on its own event loop in a thread of this process.  Its `spool`
  is the very `Spool` the service writes to, so a test may install the spool's
  `pause_hook` to make a commit fail.
- `ServerProcess(tmp_path, *flags, env={...})`: `python -m fastmta serve --workers 0
  --delivery-workers 0`, with its log in tmp_path; the port is read from its
  "listening on" log line.  `pid` is the process that serves (for /proc checks).

Settings are `fastmta serve` settings by their config names (`max_message_size=
"1M"`, `relay_networks="10.0.0.0/8"`); every server gets hostname `mx.test`, a spool
in tmp_path and no delivery, so what it accepted stays in incoming/ to be read back.

`RawClient` is a socket that reads whole SMTP replies, for the byte-level tests.
The fixtures `receive_server` and `server_process` (every test module has them:
tests/conftest.py loads this module as a plugin) return factories over
`in_process_servers(tmp_path)` and `server_processes(tmp_path)`; everything started is
stopped at teardown.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

from fastmta.config import Config, load_config
from fastmta.server.service import ReceiveService, bind_listeners
from fastmta.spool import Envelope, Spool

HOSTNAME = "mx.test"
QUEUED = re.compile(rb"queued as ([0-9A-Za-z]+)")
IO_TIMEOUT = 10.0  # every socket operation in a test gives up after this long


# --- reading what the server stored -------------------------------------------------


@dataclass(frozen=True)
class StoredMessage:
    queue: str
    envelope: Envelope
    content: bytes  # our Received header, then the message exactly as it will be delivered


# Our Received header (fastmta.protocol.received.format_received, RFC 5321 4.4); the
# "for" line is there only when the message has one recipient.
RECEIVED = re.compile(
    rb"Received: from (?P<helo>\S+) \(\[(?P<ip>[^\]]+)\]\)\r\n"
    rb"\tby (?P<by>\S+) with (?P<proto>\S+) id (?P<id>[0-9A-Za-z]+)(?P<rest>[^\r]*)\r\n"
    rb"(?:\tfor <(?P<for>[^>]+)>; [^\r]+\r\n)?"
)


def split_received(content: bytes) -> tuple[re.Match[bytes], bytes]:
    """Our Received header (parsed) and the message after it."""
    match = RECEIVED.match(content)
    assert match, f"message does not start with our Received header: {content[:200]!r}"
    return match, content[match.end():]


def spool_files(root: Path, queue: str) -> list[str]:
    directory = root / queue
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def read_message(root: Path, queue_id: str) -> StoredMessage:
    """Open one message through the spool API (read-only)."""
    spool = Spool(root)
    try:
        queue, message = spool.open_message(queue_id)
        with message:
            return StoredMessage(queue, message.envelope, message.read_body())
    finally:
        spool.close()


def wait_until(predicate: Callable[[], Any], timeout: float = IO_TIMEOUT,
               what: str = "condition", *, interval: float = 0.02) -> Any:
    """Poll `predicate` every `interval` seconds; return its first true value, or fail
    the test after `timeout` seconds naming `what` it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class _SpoolView:
    """What the server wrote under `spool_root`."""

    spool_root: Path

    def files(self, queue: str) -> list[str]:
        return spool_files(self.spool_root, queue)

    def queued_ids(self) -> list[str]:
        return self.files("incoming")

    def read(self, queue_id: str) -> StoredMessage:
        return read_message(self.spool_root, queue_id)

    def assert_no_leftovers(self, timeout: float = 5.0) -> None:
        """Nothing in tmp/ and incoming/ (polled: an abort may still be under way)."""
        wait_until(lambda: not self.files("tmp") and not self.files("incoming"), timeout,
                   f"an empty tmp/ and incoming/ (tmp={self.files('tmp')}, "
                   f"incoming={self.files('incoming')})")


# --- clients -----------------------------------------------------------------------


class RawClient:
    """A TCP client that sends bytes as given and reads whole replies (RFC 5321 4.2)."""

    def __init__(self, host: str, port: int, timeout: float = IO_TIMEOUT) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buffer = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_some(self) -> bytes:
        """One recv() into the buffer; b"" at EOF."""
        data = self.sock.recv(65536)
        self.buffer += data
        return data

    def reply(self) -> bytes:
        """The next complete reply, multiline ones joined, CRLFs kept."""
        while True:
            end = 0
            while True:
                newline = self.buffer.find(b"\r\n", end)
                if newline < 0:
                    break
                line = self.buffer[end:newline]
                end = newline + 2
                if len(line) < 4 or line[3:4] != b"-":
                    reply, self.buffer = self.buffer[:end], self.buffer[end:]
                    return reply
            if not self.recv_some():
                raise ConnectionError(f"connection closed before a complete reply; got {self.buffer!r}")

    def replies(self, count: int) -> list[bytes]:
        return [self.reply() for _ in range(count)]

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def greet(self, name: bytes = b"client.test", extended: bool = True) -> bytes:
        """Read the 220 and say EHLO (or HELO); return the answer to it."""
        greeting = self.reply()
        assert greeting.startswith(b"220 "), greeting
        return self.command((b"EHLO " if extended else b"HELO ") + name)

    def expect_closed(self, timeout: float = IO_TIMEOUT) -> bytes:
        """Read until the server closes; return what came after the buffered replies."""
        self.sock.settimeout(timeout)
        while True:
            try:
                if not self.recv_some():
                    break
            except ConnectionResetError:
                break
        rest, self.buffer = self.buffer, b""
        return rest

    def nothing_more(self, wait: float = 0.3) -> bool:
        """True if the server sends nothing within `wait` seconds (and keeps the line open)."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(IO_TIMEOUT)
        self.buffer += data
        return False


def message_bytes(subject: str, body: bytes = b"hello\r\n") -> bytes:
    return f"From: sender@example.com\r\nSubject: {subject}\r\n\r\n".encode() + body


def queue_id_of(reply: bytes) -> str:
    match = QUEUED.search(reply)
    assert match, f"not a 250 queued reply: {reply!r}"
    return match.group(1).decode()


# --- in-process server -------------------------------------------------------------


def server_config(tmp_path: Path, listen: str = "127.0.0.1:0", **settings: Any) -> Config:
    overrides: dict[str, Any] = {"listen": listen, "spool": str(tmp_path / "spool"),
                                 "hostname": HOSTNAME, "workers": 0, "delivery_workers": 0}
    overrides.update(settings)
    return load_config(overrides=overrides)


class InProcessServer(_SpoolView):
    """A ReceiveService on a uvloop (or stock asyncio) loop in a background thread."""

    def __init__(self, tmp_path: Path, loop: str = "uvloop", **settings: Any) -> None:
        self.config = server_config(tmp_path, **settings)
        self.spool_root = self.config.spool
        self.spool = Spool(self.spool_root)
        self.sockets = bind_listeners(self.config)
        self.host, self.port = self.sockets[0].getsockname()[:2]
        if loop == "uvloop":
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        elif loop == "asyncio":
            self.loop = asyncio.new_event_loop()
        else:
            raise ValueError(f"loop must be 'uvloop' or 'asyncio', got {loop!r}")
        self.service: ReceiveService | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="fastmta-test-server",
                                        daemon=True)
        self._thread.start()
        self._call(self._start())

    async def _start(self) -> None:
        self.service = ReceiveService(self.config, asyncio.get_running_loop(), spool=self.spool)
        await self.service.start(self.sockets)

    def _call(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def session_count(self) -> int:
        assert self.service is not None
        return len(self.service.sessions)

    def smtp(self, timeout: float = IO_TIMEOUT) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, timeout=timeout)

    def raw(self) -> RawClient:
        return RawClient(self.host, self.port)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        if self.service is not None:
            self._call(self.service.drain(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.spool.close()
        self.loop.close()


# --- server process ----------------------------------------------------------------


# Sets RLIMIT_FSIZE, then becomes the server (same pid): writes past the limit fail with
# EFBIG, a real write error (Python ignores SIGXFSZ, so the process does not die of it).
_WITH_FILE_SIZE_LIMIT = """\
import os, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class ServerProcess(_SpoolView):
    """`python -m fastmta serve --workers 0` in a subprocess."""

    def __init__(self, tmp_path: Path, *flags: str, listen: str = "127.0.0.1:0",
                 env: dict[str, str] | None = None, file_size_limit: int | None = None) -> None:
        self.spool_root = tmp_path / "spool"
        self.log_path = tmp_path / f"fastmta-{time.monotonic_ns()}.log"
        self.command = [
            sys.executable, "-m", "fastmta", "serve", "--workers", "0", "--delivery-workers", "0",
            "--listen", listen, "--spool", str(self.spool_root), "--hostname", HOSTNAME,
            "--drain-timeout", "2", *flags,
        ]
        if file_size_limit is not None:  # exec'd from a wrapper: no preexec_fn with threads
            self.command = [sys.executable, "-c", _WITH_FILE_SIZE_LIMIT, str(file_size_limit),
                            *self.command[1:]]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=tmp_path, env={**os.environ, **(env or {})})
        try:
            address = self.wait_for_log(r"listening on (\S+)").group(1)
            self.wait_for_log("fastmta ready")
        except BaseException:
            self.proc.kill()
            self.proc.wait(10)
            raise
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.log())
            if match is None and self.proc.poll() is not None:
                raise AssertionError(f"fastmta exited with status {self.proc.returncode} before "
                                     f"logging {pattern!r}:\n{self.log()}")
            return match

        try:
            return wait_until(found, timeout, f"log line {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log()}") from None

    def status_kib(self, field: str) -> int:
        """A size from /proc/PID/status, e.g. "VmRSS" or "VmHWM" (peak RSS), in KiB."""
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def smtp(self, timeout: float = IO_TIMEOUT) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, timeout=timeout)

    def raw(self) -> RawClient:
        return RawClient(self.host, self.port)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited in 15 s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# --- TLS ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    ca_cert: Path  # the test CA, for clients that take a file (swaks --tls-ca-path)
    client_context: ssl.SSLContext  # trusts the test CA, checks the name mx.test


def make_tls_files(directory: Path) -> TLSFiles:
    """A CA and a certificate for mx.test / 127.0.0.1 / ::1 made with trustme."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert(HOSTNAME, "127.0.0.1", "::1")
    cert, key, ca_cert = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_cert))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return TLSFiles(cert, key, ca_cert, context)


# --- fixtures (tests/conftest.py loads this module as a plugin) ------------------------


@pytest.fixture
def receive_server(tmp_path: Path) -> Iterator[Callable[..., InProcessServer]]:
    """`receive_server(**settings)` -> a started InProcessServer (see in_process_servers)."""
    yield from in_process_servers(tmp_path)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`server_process(*flags, **kwargs)` -> a started ServerProcess (see server_processes)."""
    yield from server_processes(tmp_path)


def in_process_servers(tmp_path: Path) -> Iterator[Callable[..., InProcessServer]]:
    """Yields `make(loop="uvloop", **settings)` -> a started InProcessServer, each in a
    directory of its own under tmp_path; all are stopped afterwards."""
    started: list[InProcessServer] = []

    def make(loop: str = "uvloop", **settings: Any) -> InProcessServer:
        directory = tmp_path / f"server{len(started)}"
        directory.mkdir()
        server = InProcessServer(directory, loop=loop, **settings)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def server_processes(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Yields `make(*flags, listen=..., env=..., file_size_limit=...)` -> a started
    ServerProcess; all are stopped (SIGTERM, then SIGKILL) afterwards."""
    started: list[ServerProcess] = []

    def make(*flags: str, **kwargs: Any) -> ServerProcess:
        directory = tmp_path / f"process{len(started)}"
        directory.mkdir()
        server = ServerProcess(directory, *flags, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
