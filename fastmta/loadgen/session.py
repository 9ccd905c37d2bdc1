"""The client side of one SMTP connection of the load generator, as an asyncio.Protocol.

A session greets with EHLO (RFC 5321 4.1.1.1), upgrades with STARTTLS when asked
(RFC 3207, certificates not verified: this is a test client), then sends up to
`per_connection` messages and QUITs.  Everything it sends was encoded once, in
`Plan`; per message it only writes prepared bytes and reads reply codes.

With PIPELINING (RFC 2920) offered and allowed, MAIL, every RCPT and DATA go out in
one write; after the 354 the message content, its end-of-data and the next
transaction's MAIL/RCPT/DATA (or QUIT) go out in one more (RFC 2920 3.1 lets the
content open a group).  So a message costs two writes however many recipients it has.

Invariants:
- Replies are matched to commands strictly in order (`_expect`); a reply with no
  command waiting, or that is not `ddd[ -]text`, ends the session as a protocol error.
- Every message started is finished exactly once, as accepted or failed; every
  non-2xx reply is counted by stage and code.  Nothing is retried.
- The latency sample is the time from writing the end of data to reading its reply.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass

from fastmta.loadgen.stats import WorkerResult

__all__ = ["Envelope", "LoadState", "Plan", "Session"]

# What a reply answers; also the index into STAGE_NAMES.
GREETING, EHLO, STARTTLS, MAIL, RCPT, DATA, END_OF_DATA, RSET, QUIT = range(9)
STAGE_NAMES = ("greeting", "EHLO", "STARTTLS", "MAIL", "RCPT", "DATA", "end-of-data", "RSET",
               "QUIT")

MAX_REPLY_LINE = 4096  # RFC 5321 4.5.3.1.5 allows 512; be lenient, but bounded
QUIT_LINE = b"QUIT\r\n"
RSET_LINE = b"RSET\r\n"
DATA_LINE = b"DATA\r\n"


@dataclass(frozen=True)
class Envelope:
    """One transaction's commands, encoded: one at a time, and all joined for PIPELINING."""

    commands: tuple[bytes, ...]  # MAIL, RCPT..., DATA
    pipelined: bytes
    kinds: tuple[int, ...]

    @classmethod
    def build(cls, sender: str, recipients: list[str], size: int | None) -> Envelope:
        mail = f"MAIL FROM:<{sender}>" + (f" SIZE={size}" if size is not None else "")
        lines = [mail] + [f"RCPT TO:<{rcpt}>" for rcpt in recipients]
        commands = tuple(line.encode("ascii") + b"\r\n" for line in lines) + (DATA_LINE,)
        kinds = (MAIL,) + (RCPT,) * len(recipients) + (DATA,)
        return cls(commands, b"".join(commands), kinds)


@dataclass(frozen=True)
class Plan:
    """Everything sessions share, encoded once per process."""

    ehlo: bytes
    data: bytes  # stuffed content and ".CRLF"
    envelopes: tuple[Envelope, ...]  # used in turn, message by message
    sized_envelopes: tuple[Envelope, ...]  # the same with SIZE=, when the server offers SIZE
    per_connection: int
    pipelining: bool
    ssl_context: ssl.SSLContext | None  # set: STARTTLS is required


class LoadState:
    """The per-process budget of messages, the counters, and the live sessions.

    A connection reserves up to `per_connection` messages before it connects, so N
    messages at K per connection take exactly ceil(N/K) connections; what a session
    could not send goes back to `remaining` when it ends."""

    def __init__(self, messages: int | None) -> None:
        self.remaining = messages if messages is not None else 1 << 62
        self.stopping = False
        self.sequence = 0  # messages started so far, picks the envelope
        self.result = WorkerResult()
        self.sessions: set[Session] = set()  # connected
        self.connecting: dict[Session, asyncio.Task[None]] = {}  # -> the slot task waiting

    def reserve(self, wanted: int) -> int:
        """Take up to `wanted` messages from the budget for one connection (0: none left)."""
        if self.stopping:
            return 0
        granted = min(wanted, self.remaining)
        self.remaining -= granted
        return granted

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class Session(asyncio.Protocol):
    """One SMTP connection sending prepared messages; `closed` resolves when it ends."""

    __slots__ = (
        "_accepted_rcpts",
        "_buffer",
        "_current",
        "_done",
        "_ehlo_lines",
        "_empty_data",
        "_envelopes",
        "_eod_sent_at",
        "_expect",
        "_group_sent",
        "_in_flight",
        "_mail_ok",
        "_next_rcpt",
        "_pipelining",
        "_start_after_rset",
        "_tls",
        "closed",
        "connect_timed_out",
        "error",
        "plan",
        "received",
        "reserved",
        "started_messages",
        "state",
        "transport",
        "watched_received",
        "watched_since",
    )

    def __init__(self, plan: Plan, state: LoadState, closed: asyncio.Future[None],
                 reserved: int) -> None:
        self.plan = plan
        self.state = state
        self.closed = closed
        self.reserved = reserved  # messages this connection may still start
        self.transport: asyncio.Transport | None = None
        self.received = 0  # data_received calls, watched by the stall detector
        self.watched_received = -1  # the stall detector's last look at `received`
        self.watched_since = 0.0
        self.connect_timed_out = False
        self.error: str | None = None  # why the session ended badly, if it did
        self.started_messages = 0
        self._buffer = b""
        self._expect: deque[int] = deque((GREETING,))
        self._ehlo_lines: list[bytes] = []
        self._envelopes = plan.envelopes
        self._current = plan.envelopes[0]  # the transaction in progress
        self._pipelining = False
        self._tls = False
        self._in_flight = 0  # messages started and not yet finished
        self._mail_ok = False
        self._accepted_rcpts = 0
        self._next_rcpt = 0  # without PIPELINING: index of the next command to send
        self._group_sent = False  # the next transaction went out with the message content
        self._start_after_rset = False
        self._eod_sent_at = 0.0
        self._empty_data = False  # server said 354 with no recipient accepted
        self._done = False

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.sessions.add(self)
        self.state.result.connections += 1

    def data_received(self, data: bytes) -> None:
        self.received += 1
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        start = 0
        end_of_input = len(data)
        while start < end_of_input:
            newline = data.find(b"\n", start)
            if newline < 0:
                if end_of_input - start > MAX_REPLY_LINE:
                    self.fail(f"reply line longer than {MAX_REPLY_LINE} octets")
                else:
                    self._buffer = data[start:]
                return
            if newline - start > 3 and data[start + 3] == 45:  # "ddd-": more lines follow
                if self._expect and self._expect[0] == EHLO:
                    self._ehlo_lines.append(data[start + 4 : newline])
            else:
                try:
                    code = int(data[start : start + 3])
                except ValueError:
                    code = 0
                if not 100 <= code < 600:
                    self.fail("malformed reply " + repr(data[start:newline][:60]))
                    return
                if not self._expect:
                    self.fail(f"unexpected reply {code} with no command outstanding")
                    return
                kind = self._expect.popleft()
                if kind == EHLO:
                    self._ehlo_lines.append(data[start + 4 : newline])
                self._on_reply(kind, code)
                if self._done:
                    return
            start = newline + 1

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.sessions.discard(self)
        if not self._done:
            self._done = True
            waiting_for = [STAGE_NAMES[kind] for kind in self._expect if kind != QUIT]
            if waiting_for and self.error is None:
                reason = "connection closed by server"
                if exc is not None:
                    reason = f"connection lost ({type(exc).__name__})"
                self.error = f"{reason} while waiting for {waiting_for[0]} reply"
                self.state.count(self.state.result.session_errors, self.error)
        self._finish_in_flight()
        if not self.closed.done():
            self.closed.set_result(None)

    # --- control from the runner ------------------------------------------------------

    def fail(self, reason: str) -> None:
        """End the session now, counting `reason` once and failing its unfinished messages."""
        if self._done:
            return
        self._done = True
        self.error = reason
        self.state.count(self.state.result.session_errors, reason)
        self._finish_in_flight()
        if self.transport is not None:
            self.transport.abort()

    # --- replies ----------------------------------------------------------------------

    def _on_reply(self, kind: int, code: int) -> None:
        ok = 200 <= code < 300
        if not ok and not (kind == DATA and code == 354):
            self.state.count(self.state.result.replies, f"{STAGE_NAMES[kind]} {code}")
        if kind == RCPT:
            if ok:
                self._accepted_rcpts += 1
            if not self._pipelining:
                self._send_next_rcpt_or_data()
        elif kind == MAIL:
            self._mail_ok = ok
            self._accepted_rcpts = 0
            if not self._pipelining:
                if ok:
                    self._next_rcpt = 1
                    self._send_next_rcpt_or_data()
                else:
                    self._finish_message(accepted=False)
                    self._start_transaction()
        elif kind == DATA:
            self._on_data_reply(code)
        elif kind == END_OF_DATA:
            if self._empty_data:
                self._empty_data = False
                self._finish_message(accepted=False)
            elif ok:
                self.state.result.latency.record(time.perf_counter() - self._eod_sent_at)
                self._finish_message(accepted=True)
            else:
                self._finish_message(accepted=False)
            if not self._group_sent:
                self._start_transaction()
        elif kind == RSET:
            if self._start_after_rset:
                self._start_after_rset = False
                self._start_transaction()
        elif kind == QUIT:
            self._done = True
            if self.transport is not None:
                self.transport.close()
        else:
            self._on_session_reply(kind, ok, code)

    def _on_data_reply(self, code: int) -> None:
        assert self.transport is not None
        if code != 354:
            self._finish_message(accepted=False)
            self._reset_then_continue()
            return
        if not (self._mail_ok and self._accepted_rcpts):
            # A server that says 354 although nothing was accepted (RFC 2920 3.1 says it
            # must not) gets an empty message, and the message counts as failed.
            self._empty_data = True
            self._group_sent = False
            self._expect.append(END_OF_DATA)
            self.transport.write(b".\r\n")
            return
        self._expect.append(END_OF_DATA)
        if self._pipelining:
            group, kinds = self._claim_next_group()
            self._expect.extend(kinds)
            self._group_sent = True
            self._eod_sent_at = time.perf_counter()
            if len(self.plan.data) < 16384:
                self.transport.write(self.plan.data + group)
            else:  # large message: one writev, no copy
                self.transport.writelines((self.plan.data, group))
        else:
            self._group_sent = False
            self._eod_sent_at = time.perf_counter()
            self.transport.write(self.plan.data)

    def _send_next_rcpt_or_data(self) -> None:
        assert self.transport is not None
        commands = self._current.commands
        index = self._next_rcpt
        if index < len(commands) - 1:
            self._next_rcpt = index + 1
            self._expect.append(RCPT)
            self.transport.write(commands[index])
        elif self._accepted_rcpts:
            self._expect.append(DATA)
            self.transport.write(DATA_LINE)
        else:
            self._finish_message(accepted=False)
            self._reset_then_continue()

    def _reset_then_continue(self) -> None:
        """RSET after a failed transaction, then the next one (together, when pipelining)."""
        assert self.transport is not None
        if self._pipelining:
            group, kinds = self._claim_next_group()
            self._expect.append(RSET)
            self._expect.extend(kinds)
            self.transport.write(RSET_LINE + group)
        else:
            self._start_after_rset = True
            self._expect.append(RSET)
            self.transport.write(RSET_LINE)

    def _on_session_reply(self, kind: int, ok: bool, code: int) -> None:
        assert self.transport is not None
        if kind == GREETING:
            if code != 220:
                self._quit(f"greeting refused with {code}")
                return
            self._expect.append(EHLO)
            self.transport.write(self.plan.ehlo)
        elif kind == EHLO:
            if not ok:
                self._quit(f"EHLO refused with {code}")
                return
            # The first line names the server; the others are keywords (RFC 5321 4.1.1.1).
            keywords = {line.split(None, 1)[0].upper()
                        for line in self._ehlo_lines[1:] if line.strip()}
            self._ehlo_lines = []
            if self.plan.ssl_context is not None and not self._tls:
                if b"STARTTLS" not in keywords:
                    self._quit("server does not offer STARTTLS")
                    return
                self._expect.append(STARTTLS)
                self.transport.write(b"STARTTLS\r\n")
                return
            self._pipelining = self.plan.pipelining and b"PIPELINING" in keywords
            if self._pipelining:
                self.state.result.pipelined_sessions += 1
            if b"SIZE" in keywords:
                self._envelopes = self.plan.sized_envelopes
            self._start_transaction()
        elif kind == STARTTLS:
            if code != 220:
                self._quit(f"STARTTLS refused with {code}")
                return
            asyncio.get_running_loop().create_task(self._start_tls())

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.plan.ssl_context is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, self.plan.ssl_context)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            self.fail(f"TLS handshake failed ({type(exc).__name__})")
            return
        if transport is None or self._done:
            return
        self.transport = transport  # type: ignore[assignment]
        self._tls = True
        self.state.result.tls_sessions += 1
        self._expect.append(EHLO)
        self.transport.write(self.plan.ehlo)

    # --- transactions -----------------------------------------------------------------

    def _claim_next_group(self) -> tuple[bytes, tuple[int, ...]]:
        """Start the next message if this connection has one reserved, else QUIT."""
        state = self.state
        if self.reserved and not state.stopping:
            self.reserved -= 1
            self.started_messages += 1
            self._in_flight += 1
            envelopes = self._envelopes
            self._current = envelopes[state.sequence % len(envelopes)]
            state.sequence += 1
            state.result.attempted += 1
            return self._current.pipelined, self._current.kinds
        return QUIT_LINE, (QUIT,)

    def _start_transaction(self) -> None:
        assert self.transport is not None
        group, kinds = self._claim_next_group()
        if self._pipelining or kinds[0] == QUIT:
            self._expect.extend(kinds)
            self.transport.write(group)
        else:
            self._expect.append(MAIL)
            self.transport.write(self._current.commands[0])

    def _finish_message(self, accepted: bool) -> None:
        self._in_flight -= 1
        if accepted:
            self.state.result.accepted += 1
        else:
            self.state.result.failed += 1

    def _finish_in_flight(self) -> None:
        """The session is over: unfinished messages failed, unstarted ones go back."""
        if self._in_flight > 0:
            self.state.result.failed += self._in_flight
            self._in_flight = 0
        self.state.remaining += self.reserved
        self.reserved = 0

    def _quit(self, reason: str) -> None:
        """Stop this session politely after a refusal: count why, say QUIT, close."""
        assert self.transport is not None
        self.error = reason
        self.state.count(self.state.result.session_errors, reason)
        self._finish_in_flight()
        self._expect.clear()
        self._expect.append(QUIT)
        self.transport.write(QUIT_LINE)
