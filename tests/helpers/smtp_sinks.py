"""Throwaway SMTP and LMTP servers for tests of anything that sends mail.

`SMTPSink` listens on a loopback address (any of 127.0.0.0/8, so several sinks can
stand in for several MX hosts) and a given or free port, runs stock asyncio in a
thread of its own (so the code under test may use asyncio or uvloop in the main
thread, or be another process), and records what a test asserts on: sessions
(commands in order, HELO name, TLS, whether commands came pipelined) and
messages (envelope with parameters, the DATA bytes as sent and unstuffed).
It is strict where a client bug would hide: parameters the sink did not offer
get 555, and a client that pipelines without PIPELINING is recorded as such.

Knobs (keyword arguments; the defaults make a plain, accepting ESMTP server):
- `greeting`: the first line, e.g. "421 4.3.2 busy" or "554 5.7.1 go away"; after a
  non-220 greeting only QUIT is answered (221), and a 421 greeting closes at once.
- `ehlo=False`: 500 to EHLO, so only HELO works (an RFC 821 server).
- `pipelining`, `eightbitmime`, `smtputf8`, `dsn`: EHLO keywords to offer;
  `size`: the SIZE limit to announce (0: no limit, None: no SIZE keyword).
- `tls_context`: offer STARTTLS with this server context (see `sink_tls_context`).
- `rcpt_replies`: address -> reply line, e.g. {"gone@x": "550 5.1.1 no such user",
  "busy@x": "450 4.2.1 mailbox busy"}; other recipients get 250.
- `mail_reply`, `data_reply`: replace the 250 to MAIL / the 354 to DATA.
- `end_of_data_reply(message) -> line | None` (SMTP) or `lmtp_replies` address ->
  line (LMTP, one reply per accepted recipient): the verdict after the data.
- `lmtp=True`: an LMTP server (RFC 2033): LHLO only, a reply per recipient after data.
- `drop_after_data=True`: record the message, then close without a verdict.
- `close_after_message=True`: close the connection after each verdict.
- `silent=True`: accept connections and never say anything (timeouts).

Usage:

    with SMTPSink("127.0.0.2", rcpt_replies={"gone@example.com": "550 5.1.1 no such user"}) as sink:
        ... deliver to sink.host, sink.port ...
    assert sink.messages[0].content == original
    with refusing_address("127.0.0.3") as (host, port):   # connections are refused here
        ...

Only for tests: no limits on line length or message size beyond `size`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Self

__all__ = ["SMTPSink", "SinkMessage", "SinkSession", "refusing_address", "sink_tls_context",
           "unstuff"]

_PATH = re.compile(r"(?i)(FROM|TO):\s*<([^>]*)>(.*)")
_OFFERED_PARAMS = {"SIZE": "size", "BODY": "eightbitmime", "SMTPUTF8": "smtputf8",
                   "RET": "dsn", "ENVID": "dsn", "NOTIFY": "dsn", "ORCPT": "dsn"}


def unstuff(wire: bytes) -> bytes:
    """Message content from its DATA form without the final ".CRLF" (RFC 5321 4.5.2)."""
    lines = wire.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@dataclass
class SinkMessage:
    """One message as the sink got it."""

    session: int  # number of the connection it came over, from 1
    helo: str
    tls: bool
    sender: str
    mail_params: dict[str, str | None]
    recipients: list[str]
    rcpt_params: list[dict[str, str | None]]
    wire: bytes  # the DATA bytes as sent (dot-stuffed), without the final ".CRLF"

    @property
    def content(self) -> bytes:
        return unstuff(self.wire)


@dataclass
class SinkSession:
    """One connection."""

    number: int
    peer: tuple[str, int]
    commands: list[str] = field(default_factory=list)
    helo: str = ""
    tls: bool = False
    pipelined: bool = False  # some read held more than one command
    closed: bool = False


def sink_tls_context(*names: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for STARTTLS, client context that trusts it) from a fresh trustme CA."""
    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert(*(names or ("sink.test", "127.0.0.1")))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


@contextlib.contextmanager
def refusing_address(host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """An address whose port refuses connections: bound, never listening (so the port
    cannot be taken by another test meanwhile, and the kernel answers with RST)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield host, sock.getsockname()[1]


class SMTPSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, name: str = "sink.test",
                 greeting: str | None = None, ehlo: bool = True, lmtp: bool = False,
                 pipelining: bool = True, eightbitmime: bool = True, smtputf8: bool = False,
                 dsn: bool = False, size: int | None = 0, tls_context: ssl.SSLContext | None = None,
                 rcpt_replies: Mapping[str, str] | None = None, mail_reply: str | None = None,
                 data_reply: str | None = None,
                 end_of_data_reply: Callable[[SinkMessage], str | None] | None = None,
                 lmtp_replies: Mapping[str, str] | None = None, drop_after_data: bool = False,
                 close_after_message: bool = False, silent: bool = False) -> None:
        self.host, self.port, self.name = host, port, name
        self.greeting = greeting or f"220 {name} ESMTP test sink"
        self.ehlo, self.lmtp = ehlo, lmtp
        self.offers = {"pipelining": pipelining, "eightbitmime": eightbitmime,
                       "smtputf8": smtputf8, "dsn": dsn, "size": size is not None}
        self.size = size
        self.tls_context = tls_context
        self.rcpt_replies = dict(rcpt_replies or {})
        self.mail_reply, self.data_reply = mail_reply, data_reply
        self.end_of_data_reply = end_of_data_reply
        self.lmtp_replies = dict(lmtp_replies or {})
        self.drop_after_data, self.close_after_message = drop_after_data, close_after_message
        self.silent = silent
        self.sessions: list[SinkSession] = []
        self.messages: list[SinkMessage] = []
        self.open_connections = 0
        self.most_open_connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"smtp-sink-{host}")
        self._server: asyncio.AbstractServer | None = None
        self._live: set[_SinkProtocol] = set()

    @property
    def connections(self) -> int:
        return len(self.sessions)

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait for the sink thread to reach a state (e.g. every session closed)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("the sink did not reach the expected state in time")
            time.sleep(0.005)

    async def _start(self) -> None:
        self._server = await self._loop.create_server(lambda: _SinkProtocol(self), self.host,
                                                      self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in list(self._live):
            protocol.transport.abort()
        await self._server.wait_closed()

    def extensions(self, tls: bool) -> list[str]:
        keywords = []
        if self.offers["pipelining"]:
            keywords.append("PIPELINING")
        if self.size is not None:
            keywords.append(f"SIZE {self.size}")
        if self.offers["eightbitmime"]:
            keywords.append("8BITMIME")
        if self.offers["smtputf8"]:
            keywords.append("SMTPUTF8")
        if self.offers["dsn"]:
            keywords.append("DSN")
        keywords.append("ENHANCEDSTATUSCODES")
        if self.tls_context is not None and not tls:
            keywords.append("STARTTLS")
        return keywords


class _SinkProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.in_data = False
        self.scan_from = 0
        self.handshaking = False
        self.greeted_ok = False
        self.sender: str | None = None
        self.mail_params: dict[str, str | None] = {}
        self.recipients: list[str] = []
        self.rcpt_params: list[dict[str, str | None]] = []
        self.record: SinkSession

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sink = self.sink
        sink._live.add(self)
        sink.open_connections += 1
        sink.most_open_connections = max(sink.most_open_connections, sink.open_connections)
        self.record = SinkSession(len(sink.sessions) + 1, transport.get_extra_info("peername"))
        sink.sessions.append(self.record)
        if sink.silent:
            return
        self.reply(sink.greeting)
        self.greeted_ok = sink.greeting.startswith("220")
        if sink.greeting.startswith("421"):
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink._live.discard(self)
        self.sink.open_connections -= 1
        self.record.closed = True

    def reply(self, line: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(line.encode() + b"\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.handshaking or self.sink.silent:
            return
        commands = 0
        while not self.transport.is_closing() and not self.handshaking:
            if self.in_data:
                if not self.take_data():
                    return
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line = self.buffer[:end].decode("utf-8", "replace")
            del self.buffer[: end + 2]
            commands += 1
            self.record.pipelined |= commands > 1
            self.record.commands.append(line)
            self.command(line)

    def take_data(self) -> bool:
        if self.buffer.startswith(b".\r\n"):
            end = -2  # an empty message: the terminator directly follows the 354
        else:
            end = self.buffer.find(b"\r\n.\r\n", max(0, self.scan_from - 4))
            if end < 0:
                self.scan_from = len(self.buffer)
                return False
        wire = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 5]
        self.in_data, self.scan_from = False, 0
        self.end_of_data(wire)
        return True

    def command(self, line: str) -> None:
        sink = self.sink
        verb = line.split(" ", 1)[0].upper()
        if not self.greeted_ok:
            self.reply("221 2.0.0 bye" if verb == "QUIT" else "503 5.5.1 no service here")
            if verb == "QUIT":
                self.transport.close()
            return
        if verb in ("EHLO", "LHLO") and (verb == "LHLO") == sink.lmtp and (sink.ehlo or sink.lmtp):
            self.record.helo = line[5:].strip()
            self.reset()
            lines = [sink.name] + sink.extensions(self.record.tls)
            for keyword in lines[:-1]:
                self.reply("250-" + keyword)
            self.reply("250 " + lines[-1])
        elif verb == "HELO" and not sink.lmtp:
            self.record.helo = line[5:].strip()
            self.reset()
            self.reply("250 " + sink.name)
        elif verb == "MAIL":
            self.mail(line)
        elif verb == "RCPT":
            self.rcpt(line)
        elif verb == "DATA":
            if self.sender is None or not self.recipients:
                self.reply("503 5.5.1 need MAIL and a good RCPT first")
            elif sink.data_reply is not None:
                self.reply(sink.data_reply)
            else:
                self.in_data = True
                self.reply("354 End data with <CR><LF>.<CR><LF>")
        elif verb == "RSET":
            self.reset()
            self.reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            self.reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            self.reply("221 2.0.0 Bye")
            self.transport.close()
        elif verb == "STARTTLS" and sink.tls_context is not None and not self.record.tls:
            self.reply("220 2.0.0 Ready to start TLS")
            self.handshaking = True
            self.buffer.clear()  # RFC 3207 5: nothing sent before the handshake counts
            asyncio.get_running_loop().create_task(self.start_tls())
        else:
            self.reply("500 5.5.1 command not recognised by the sink")

    def reset(self) -> None:
        self.sender, self.mail_params, self.recipients, self.rcpt_params = None, {}, [], []

    def params(self, text: str) -> dict[str, str | None] | None:
        params: dict[str, str | None] = {}
        for item in text.split():
            key, sep, value = item.partition("=")
            params[key.upper()] = value if sep else None
            offer = _OFFERED_PARAMS.get(key.upper())
            if offer is None or not self.sink.offers[offer]:
                self.reply(f"555 5.5.4 parameter {key} was not offered by the sink")
                return None
        return params

    def mail(self, line: str) -> None:
        match = _PATH.match(line[5:])
        if match is None or match.group(1).upper() != "FROM" or self.sender is not None:
            self.reply("503 5.5.1 bad MAIL (syntax or nested)")
            return
        params = self.params(match.group(3))
        if params is None:
            return
        size = self.sink.size
        if size and int(params.get("SIZE") or 0) > size:
            self.reply(f"552 5.3.4 message size exceeds {size}")
            return
        if self.sink.mail_reply is not None:
            self.reply(self.sink.mail_reply)
            if not self.sink.mail_reply.startswith("250"):
                return
        else:
            self.reply("250 2.1.0 Sender ok")
        self.sender, self.mail_params = match.group(2), params

    def rcpt(self, line: str) -> None:
        match = _PATH.match(line[5:])
        if match is None or match.group(1).upper() != "TO" or self.sender is None:
            self.reply("503 5.5.1 bad RCPT (syntax, or no MAIL first)")
            return
        params = self.params(match.group(3))
        if params is None:
            return
        address = match.group(2)
        refusal = self.sink.rcpt_replies.get(address)
        if refusal is not None:
            self.reply(refusal)
            return
        self.recipients.append(address)
        self.rcpt_params.append(params)
        self.reply("250 2.1.5 Recipient ok")

    def end_of_data(self, wire: bytes) -> None:
        sink = self.sink
        message = SinkMessage(self.record.number, self.record.helo, self.record.tls,
                              self.sender or "", self.mail_params, self.recipients,
                              self.rcpt_params, wire)
        sink.messages.append(message)
        self.reset()
        if sink.drop_after_data:
            self.transport.abort()
            return
        number = len(sink.messages)
        if sink.lmtp:
            for address in message.recipients:
                self.reply(sink.lmtp_replies.get(address, f"250 2.0.0 <{address}> delivered"))
        else:
            verdict = sink.end_of_data_reply(message) if sink.end_of_data_reply else None
            self.reply(verdict or f"250 2.0.0 Ok: queued as M{number}")
        if sink.close_after_message:
            self.transport.close()

    async def start_tls(self) -> None:
        assert self.sink.tls_context is not None
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(  # type: ignore[assignment]
                self.transport, self, self.sink.tls_context, server_side=True)
        except (OSError, ssl.SSLError):
            self.transport.abort()
            return
        self.record.tls = True
        self.handshaking = False
        self.reset()
        if self.buffer:
            self.data_received(b"")
