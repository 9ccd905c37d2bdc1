"""A small SMTP sink for the load generator's tests: accepts, counts and checks what it gets.

It runs stock asyncio (not uvloop: the client under test uses uvloop) in a thread of
the test process, on 127.0.0.1 and a free port, and records what a test asserts on:
connections, messages and their unstuffed content, recipients per message, TLS
sessions, and whether the client pipelined (more than one command in one read).

Knobs, all keyword arguments of `LoadgenSink`:
- `pipelining=False`: EHLO does not offer PIPELINING.
- `tls_context`: offer STARTTLS with this server context.
- `end_of_data_reply(n)`: the reply line for the n-th message (1-based, sink-wide), or
  None for the usual 250; `hang_up_at(n)` closes the connection instead of replying.
- `rcpt_reply(address)`: the reply line for a RCPT, or None for 250.
- `silent=True`: accept connections and never say anything (timeouts).

Usage:

    with LoadgenSink(end_of_data_reply=lambda n: b"451 4.3.0 try later" if n % 3 == 0 else None) as sink:
        ... fastmta loadgen 127.0.0.1:{sink.port} ...
        assert sink.counters.messages == 30

Only for tests: no limits on line length or message size.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

__all__ = ["LoadgenSink", "unstuff"]

ReplyFor = Callable[[int], bytes | None]


def unstuff(wire: bytes) -> bytes:
    """Message content from its DATA form without the final ".CRLF" (RFC 5321 4.5.2)."""
    lines = wire.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@dataclass
class Received:
    """One message as the sink got it."""

    sender: bytes
    recipients: list[bytes]
    content: bytes


@dataclass
class _Counters:
    connections: int = 0
    tls_sessions: int = 0
    messages: int = 0  # ends of data seen (accepted or not)
    accepted: int = 0
    pipelined_connections: int = 0
    most_commands_in_one_read: int = 0
    received: list[Received] = field(default_factory=list)


class LoadgenSink:
    def __init__(self, *, pipelining: bool = True, tls_context: ssl.SSLContext | None = None,
                 end_of_data_reply: ReplyFor | None = None,
                 hang_up_at: Callable[[int], bool] | None = None,
                 rcpt_reply: Callable[[bytes], bytes | None] | None = None,
                 silent: bool = False) -> None:
        self.pipelining = pipelining
        self.tls_context = tls_context
        self.end_of_data_reply = end_of_data_reply
        self.hang_up_at = hang_up_at
        self.rcpt_reply = rcpt_reply
        self.silent = silent
        self.counters = _Counters()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loadgen-sink",
                                        daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_SinkSession] = set()

    def __enter__(self) -> Self:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await self._loop.create_server(lambda: _SinkSession(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.abort()
        await self._server.wait_closed()


class _SinkSession(asyncio.Protocol):
    def __init__(self, sink: LoadgenSink) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.in_data = False
        self.tls = False
        self.tls_pending = False  # between our 220 and the end of the handshake
        self.pipelined = False
        self.sender: bytes | None = None
        self.recipients: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink._sessions.add(self)
        self.sink.counters.connections += 1
        if not self.sink.silent:
            self.reply(b"220 sink.test ESMTP loadgen test sink")

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink._sessions.discard(self)

    def reply(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line + b"\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.tls_pending:
            # The client may speak before start_tls() returns here: hold its bytes
            # until replies can go out over the TLS transport.
            return
        commands = 0
        while self.transport is not None and not self.transport.is_closing():
            if self.in_data:
                end = (b"\r\n" + self.buffer).find(b"\r\n.\r\n")
                if end < 0:
                    return
                # `end` indexes the CRLF-prefixed buffer: the content (with its last
                # CRLF) is buffer[:end], and ".CRLF" follows it.
                wire, self.buffer = self.buffer[:end], self.buffer[end + 3:]
                self.in_data = False
                self.end_of_data(unstuff(wire))
                continue
            line, found, rest = self.buffer.partition(b"\r\n")
            if not found:
                return
            self.buffer = rest
            commands += 1
            counters = self.sink.counters
            counters.most_commands_in_one_read = max(counters.most_commands_in_one_read, commands)
            if commands > 1 and not self.pipelined:
                self.pipelined = True
                counters.pipelined_connections += 1
            if self.command(line) == "starttls":
                return

    def command(self, line: bytes) -> str | None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            keywords = [b"SIZE 100000000", b"8BITMIME"]
            if self.sink.pipelining:
                keywords.insert(0, b"PIPELINING")
            if self.sink.tls_context is not None and not self.tls:
                keywords.append(b"STARTTLS")
            for keyword in [b"sink.test"] + keywords[:-1]:
                self.reply(b"250-" + keyword)
            self.reply(b"250 " + keywords[-1])
        elif verb == b"HELO":
            self.reply(b"250 sink.test")
        elif verb == b"MAIL":
            self.sender = line[10:].strip()
            self.recipients = []
            self.reply(b"250 2.1.0 Ok")
        elif verb == b"RCPT":
            address = line[8:].strip()
            if self.sender is None:
                self.reply(b"503 5.5.1 MAIL first")
                return None
            refusal = self.sink.rcpt_reply(address) if self.sink.rcpt_reply else None
            if refusal is not None:
                self.reply(refusal)
            else:
                self.recipients.append(address)
                self.reply(b"250 2.1.5 Ok")
        elif verb == b"DATA":
            if not self.recipients:
                self.reply(b"554 5.5.1 no valid recipients")
            else:
                self.in_data = True
                self.reply(b"354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"RSET":
            self.sender, self.recipients = None, []
            self.reply(b"250 2.0.0 Ok")
        elif verb == b"QUIT":
            self.reply(b"221 2.0.0 Bye")
            assert self.transport is not None
            self.transport.close()
        elif verb == b"STAR" and self.sink.tls_context is not None and not self.tls:
            self.reply(b"220 2.0.0 Ready to start TLS")
            self.tls_pending = True
            self.buffer = b""
            asyncio.get_running_loop().create_task(self.start_tls())
            return "starttls"
        else:
            self.reply(b"502 5.5.2 not implemented by the sink")
        return None

    async def start_tls(self) -> None:
        assert self.transport is not None and self.sink.tls_context is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, self.sink.tls_context,
                                             server_side=True)
        except (OSError, ssl.SSLError):
            return
        self.transport = transport  # type: ignore[assignment]
        self.tls = True
        self.tls_pending = False
        self.sink.counters.tls_sessions += 1
        self.sender, self.recipients = None, []
        if self.buffer:
            self.data_received(b"")

    def end_of_data(self, content: bytes) -> None:
        counters = self.sink.counters
        counters.messages += 1
        number = counters.messages
        counters.received.append(Received(self.sender or b"", self.recipients, content))
        self.sender, self.recipients = None, []
        if self.sink.hang_up_at is not None and self.sink.hang_up_at(number):
            assert self.transport is not None
            self.transport.abort()
            return
        refusal = self.sink.end_of_data_reply(number) if self.sink.end_of_data_reply else None
        if refusal is not None:
            self.reply(refusal)
        else:
            counters.accepted += 1
            self.reply(b"250 2.0.0 Ok: queued as " + str(number).encode())
