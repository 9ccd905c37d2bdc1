"""Sans-IO SMTP and LMTP client: replies in, commands and events out.

`ClientConnection` knows no sockets, files or clocks, like `server.py`.  The
transport hands every received packet to `receive_data()`, acts on the events
it returns, writes `data_to_send()` after every call, and waits for each reply
no longer than the RFC 5321 4.5.3.2 timeout of the stage named by `awaiting`.

Session: greeting, EHLO (LHLO for LMTP, RFC 2033 4.1), then STARTTLS when the
peer offers it and the caller wants it (RFC 3207; after the handshake the
extensions are forgotten and EHLO is sent again), then `Ready`.  A 5xx to EHLO
falls back to HELO; HELO itself resets the session (RFC 5321 4.1.4), so no RSET
is needed there.  Transaction: `send_message(Transaction)` sends RSET (on every
transaction after the first of a session), MAIL, one RCPT per recipient and
DATA, all in one write under PIPELINING (RFC 2920) or one by one without it;
`SendContent` asks for the content (`send_content()` chunks, dot-stuffed by the
kernel, then `end_content()`); `TransactionDone` gives one outcome per
recipient: the RCPT refusal, or the reply after the data (one per accepted
recipient in LMTP, RFC 2033 4.2).  `quit()` ends the session.

Invariants:
- Replies are matched to commands strictly in order, and every reply of a
  pipelined group is checked (RFC 2920 3.1).  A 354 to DATA with no recipient
  accepted is answered with an empty message, the only way out of DATA.
- After an event that needs the application (Ready, UpgradeTLS, SendContent,
  TransactionDone) input is held, unparsed, until the application's next call,
  so a reply can never be matched to a command not yet sent.  Bytes received
  between the 220 to STARTTLS and the handshake are dropped: plaintext must not
  be read as if it came over TLS (RFC 3207 5, the CVE-2011-0411 injection).
- Nothing is sent for a transaction the peer is known to refuse: a message over
  its SIZE limit (RFC 1870 3, 4) gets 552 5.3.4, a non-ASCII address for a peer
  without SMTPUTF8 gets 553 5.6.7 (RFC 6531 3.2), an address holding a control
  character (which could inject commands) gets 501.
- An 8-bit body is only sent to a peer that offers 8BITMIME, with BODY=8BITMIME
  (RFC 6152); the caller downgrades it first otherwise (fastmta.mime.downgrade).
- Memory is bounded: reply lines are cut at `MAX_REPLY_LINE`, a reply has at
  most `MAX_REPLY_LINES` lines, held input at most `MAX_HELD_INPUT` bytes.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fastmta.kernels import LINE_TOO_LONG, DotStuffer, LineSplitter
from fastmta.protocol.replies import Reply

__all__ = [
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "Closed",
    "Direction",
    "Ready",
    "RecipientOutcome",
    "ReplyError",
    "ReplyParser",
    "SendContent",
    "SessionFailed",
    "Stage",
    "Transaction",
    "TransactionDone",
    "UpgradeTLS",
    "parse_extensions",
]

MAX_REPLY_LINE = 2048  # RFC 5321 4.5.3.1.5 says 512 with CRLF; real servers exceed it
MAX_REPLY_LINES = 256  # an EHLO reply has a dozen lines; more is abuse
MAX_HELD_INPUT = 1 << 20  # bytes a peer may send while we owe it nothing but content

_REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -]|$)")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: +|$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DSN_MAIL = ("RET", "ENVID")  # RFC 3461 4.3, 4.4: passed on only to a peer offering DSN
_DSN_RCPT = ("NOTIFY", "ORCPT")  # RFC 3461 4.1, 4.2


class ReplyError(ValueError):
    """The peer sent something that is not an SMTP reply (RFC 5321 4.2)."""


class Direction(enum.StrEnum):
    """Transcript line kinds, printed Stevens-style by `sendmail -v`."""

    SENT = ">>>"
    RECEIVED = "<<<"
    INFO = "---"  # connection events, written by the transport


Transcript = Callable[[Direction, str], None]


class Stage(enum.Enum):
    """What a reply answers; also the key of the transport's timeout table."""

    GREETING = "greeting"
    EHLO = "EHLO"
    LHLO = "LHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    RSET = "RSET"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    END_OF_DATA = "end of DATA"
    QUIT = "QUIT"
    PRECHECK = "checks before MAIL FROM"  # decided here, nothing sent


class ClientState(enum.Enum):
    GREETING = "waiting for the greeting"
    HELLO = "EHLO/HELO/STARTTLS exchange"
    TLS_HANDSHAKE = "TLS handshake"
    READY = "ready for a transaction"
    TRANSACTION = "transaction"
    CONTENT = "sending the content"
    QUITTING = "waiting for the reply to QUIT"
    FAILED = "session failed"
    CLOSED = "closed"


# --- replies ------------------------------------------------------------------------


class ReplyParser:
    """Incremental parser of (multiline) replies, RFC 5321 4.2.1, with RFC 2034 codes.

    `feed(bytes)`, then `next_reply()` until it gives None.  Each complete line is
    also passed to `on_line` (for transcripts).  Raises ReplyError on a line that
    is not "ddd", "ddd text" or "ddd-text", or a multiline reply whose codes differ.
    """

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        self._splitter = LineSplitter(MAX_REPLY_LINE)
        self._lines: list[str] = []
        self._code = b""
        self._on_line = on_line

    @property
    def buffered(self) -> int:
        return self._splitter.buffered

    def feed(self, data: bytes) -> None:
        self._splitter.feed(data)

    def discard(self) -> int:
        """Drop every byte not yet parsed (and any partial reply); return how many."""
        self._lines, self._code = [], b""
        return len(self._splitter.take_rest())

    def next_reply(self) -> Reply | None:
        while (item := self._splitter.next_line()) is not None:
            raw, flags = item  # a bare LF is accepted as a line end: be liberal here
            text = raw.decode("utf-8", "replace")
            if self._on_line is not None:
                self._on_line(text + (" [line cut]" if flags & LINE_TOO_LONG else ""))
            match = _REPLY_LINE.match(raw)
            if match is None:
                raise ReplyError(f"not an SMTP reply line: {text[:80]!r}")
            if self._code and match.group(1) != self._code:
                raise ReplyError(f"multiline reply changed its code from {self._code.decode()} "
                                 f"to {match.group(1).decode()}")
            if len(self._lines) >= MAX_REPLY_LINES:
                raise ReplyError(f"reply longer than {MAX_REPLY_LINES} lines")
            self._code = match.group(1)
            self._lines.append(_clean(text[4:]))
            if match.group(2) != b"-":
                code, lines = int(self._code), self._lines
                self._lines, self._code = [], b""
                return _make_reply(code, lines)
        return None


def _clean(text: str) -> str:
    return _CONTROL.sub(" ", text)  # a stray CR or NUL must not reach logs or DSNs


def _make_reply(code: int, lines: list[str]) -> Reply:
    enhanced = ""
    if code // 100 != 3:  # RFC 2034 4: no enhanced code on intermediate replies
        first = _ENHANCED.match(lines[0])
        if first is not None and first.group(1) == str(code)[0]:
            enhanced = ".".join(first.groups())
            prefix = _ENHANCED
            lines = [line[m.end():] if (m := prefix.match(line)) else line for line in lines]
    return Reply(code, enhanced, "\n".join(lines))


def parse_extensions(ehlo: Reply) -> dict[str, str]:
    """EHLO keywords (upper-cased) and their parameters, from every line but the first."""
    extensions: dict[str, str] = {}
    for line in ehlo.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


# --- what the application gives and gets -------------------------------------------


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message to send: envelope, content size and whether the content is 8-bit.

    `mail_params` are the parameters the message arrived with (SMTPUTF8, RET, ENVID,
    ...) and `rcpt_params` one mapping per recipient (NOTIFY, ORCPT); the client
    passes on what the peer understands and builds SIZE and BODY itself.
    """

    sender: str  # "" for the null reverse path
    recipients: Sequence[str]
    size: int  # octets of content with CRLF line ends, before dot-stuffing (RFC 1870 5)
    eight_bit: bool = False
    mail_params: Mapping[str, str | None] = field(default_factory=dict)
    rcpt_params: Sequence[Mapping[str, str | None]] = ()


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """The reply that decided one recipient, and to which command it came."""

    recipient: str
    reply: Reply
    stage: Stage

    @property
    def delivered(self) -> bool:
        return self.reply.code < 400

    @property
    def permanent(self) -> bool:
        return self.reply.code >= 500

    @property
    def remote(self) -> bool:
        """True when the reply came from the peer (False: decided before sending)."""
        return self.stage is not Stage.PRECHECK


class ClientEvent:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Ready(ClientEvent):
    """The session is established; `extensions` as the last EHLO listed them."""

    extensions: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class UpgradeTLS(ClientEvent):
    """220 to STARTTLS: do the handshake now, then call `tls_established()` (or close)."""


@dataclass(frozen=True, slots=True)
class SendContent(ClientEvent):
    """354 to DATA: call `send_content()` with the whole content, then `end_content()`."""


@dataclass(frozen=True, slots=True)
class TransactionDone(ClientEvent):
    """Every recipient decided, in the order given to `send_message()`."""

    outcomes: tuple[RecipientOutcome, ...]


@dataclass(frozen=True, slots=True)
class SessionFailed(ClientEvent):
    """The session cannot go on.  `decided` has one entry per recipient of the open
    transaction (empty without one): its outcome, or None if it is undecided and may
    be tried elsewhere, unless `data_sent` (the end of data went out unanswered, so
    the message may have been accepted)."""

    stage: Stage | None  # what was awaited; None between commands
    reason: str
    reply: Reply | None = None  # the reply that ended it, if one did
    decided: tuple[RecipientOutcome | None, ...] = ()
    data_sent: bool = False
    can_quit: bool = False  # the peer is still listening: QUIT is polite (RFC 5321 3.1)


@dataclass(frozen=True, slots=True)
class Closed(ClientEvent):
    """The peer answered QUIT."""


# --- the state machine ------------------------------------------------------------------


class _Open:
    """The transaction in flight."""

    def __init__(self, spec: Transaction, outcomes: list[RecipientOutcome | None]) -> None:
        self.spec = spec
        self.outcomes = outcomes
        self.accepted: list[int] = []  # recipients with a 2xx to RCPT, in order
        self.mail_refusal: Reply | None = None
        self.end_replies = 0  # replies still due after the end of data
        self.end_sent = False
        self.empty_content = False  # 354 with nobody accepted: "." was sent, replies ignored
        self.stuffer = DotStuffer()


class ClientConnection:
    """One SMTP (or LMTP) client session; see the module docstring for the flow."""

    def __init__(self, local_hostname: str, *, lmtp: bool = False, starttls: bool = True,
                 transcript: Transcript | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", local_hostname):
            raise ValueError(f"EHLO name {local_hostname!r} is not a domain or address literal "
                             "(RFC 5321 4.1.1.1); set `hostname` in the configuration")
        self.local_hostname = local_hostname
        self.lmtp = lmtp
        self.starttls_wanted = starttls
        self.transcript = transcript  # may be replaced between transactions
        self._parser = ReplyParser(self._received_line)
        self.state = ClientState.GREETING
        self.greeting: Reply | None = None
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self.tls = False
        self.transactions = 0  # transactions started on this session
        self._expect: deque[tuple[Stage, int]] = deque([(Stage.GREETING, -1)])
        self._unsent: deque[tuple[Stage, int, bytes]] = deque()  # without PIPELINING
        self._out: list[bytes] = []
        self._held = False  # input waits for the application (see the module docstring)
        self._open: _Open | None = None
        self._can_quit = False  # after a failure: the peer still listens
        self._replies_due = 0  # replies still owed when the session failed
        self._skip = 0  # of those, how many to ignore before the reply to QUIT

    # -- properties the transport reads ---------------------------------------------

    @property
    def awaiting(self) -> Stage | None:
        """The command whose reply is awaited next (None: nothing is outstanding)."""
        return self._expect[0][0] if self._expect else None

    @property
    def max_size(self) -> int | None:
        """The peer's fixed message size limit from SIZE (RFC 1870 4; 0 means none)."""
        value = self.extensions.get("SIZE", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    def supports(self, keyword: str) -> bool:
        return keyword.upper() in self.extensions

    @property
    def accepts_8bit(self) -> bool:
        return "8BITMIME" in self.extensions

    # -- I/O ------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        return b"".join(out)

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        if self.state is ClientState.FAILED and self._can_quit:
            self._held = True  # kept for quit(): the reply to QUIT may come in this packet
        elif self.state in (ClientState.CLOSED, ClientState.FAILED):
            return []
        if self.state is ClientState.TLS_HANDSHAKE:
            return []  # plaintext after the 220 to STARTTLS: dropped (see module docstring)
        self._parser.feed(data)
        if self._held:
            if self._parser.buffered > MAX_HELD_INPUT:
                return self._fail(self.awaiting, "protocol error: the peer sent more than "
                                  f"{MAX_HELD_INPUT} bytes nobody asked for")
            return []
        return self._parse()

    def connection_lost(self) -> list[ClientEvent]:
        """The transport closed; a session not ended by QUIT fails here."""
        if self.state is ClientState.QUITTING:
            self.state = ClientState.CLOSED
            return [Closed()]
        return self.abort("connection lost")

    def abort(self, reason: str) -> list[ClientEvent]:
        """Give up on the session (timeout, TLS failure, connection lost): SessionFailed
        for a live session, Closed while quitting, nothing if it had already ended."""
        if self.state is ClientState.QUITTING:
            events: list[ClientEvent] = [Closed()]
        elif self.state in (ClientState.CLOSED, ClientState.FAILED):
            events = []
        else:
            events = self._fail(self.awaiting, reason)
        self.state = ClientState.CLOSED
        return events

    # -- application calls ---------------------------------------------------------------

    def tls_established(self) -> list[ClientEvent]:
        """The handshake succeeded: forget what the peer said in plaintext, EHLO again."""
        self._require(ClientState.TLS_HANDSHAKE, "tls_established")
        self.tls = True
        self.extensions, self.esmtp = {}, False
        self._parser.discard()
        self.state = ClientState.HELLO
        self._hello(Stage.LHLO if self.lmtp else Stage.EHLO)
        return self._resume()

    def send_message(self, spec: Transaction) -> list[ClientEvent]:
        """Start a transaction.  May finish at once (TransactionDone) without sending."""
        self._require(ClientState.READY, "send_message")
        if spec.eight_bit and not self.accepts_8bit:
            raise ValueError("the content is 8-bit and the peer lacks 8BITMIME: downgrade it "
                             "first (fastmta.mime.downgrade.downgrade_8bit, RFC 6152)")
        if len(spec.rcpt_params) not in (0, len(spec.recipients)):
            raise ValueError("rcpt_params needs one mapping per recipient, or none at all")
        outcomes = self._precheck(spec)
        if all(outcome is not None for outcome in outcomes):
            return [TransactionDone(tuple(outcomes))]  # type: ignore[arg-type]
        txn = self._open = _Open(spec, outcomes)
        self.state = ClientState.TRANSACTION
        utf8 = self.supports("SMTPUTF8") and (
            not _all_ascii(spec) or "SMTPUTF8" in {k.upper() for k in spec.mail_params})
        commands: list[tuple[Stage, int, bytes]] = []
        if self.transactions:
            commands.append((Stage.RSET, -1, b"RSET\r\n"))
        self.transactions += 1
        commands.append((Stage.MAIL, -1, self._mail_command(spec, utf8)))
        for index, recipient in enumerate(spec.recipients):
            if txn.outcomes[index] is None:
                params = spec.rcpt_params[index] if spec.rcpt_params else {}
                rcpt = f"RCPT TO:<{recipient}>{self._dsn(params, _DSN_RCPT)}\r\n"
                commands.append((Stage.RCPT, index, rcpt.encode("utf-8" if utf8 else "ascii")))
        commands.append((Stage.DATA, -1, b"DATA\r\n"))
        if self.supports("PIPELINING"):
            for command in commands:
                self._send(*command)
        else:
            self._unsent.extend(commands)
            self._send_next()  # RSET or MAIL: never finishes the transaction
        return self._resume()

    def send_content(self, chunk: bytes) -> None:
        """Queue one piece of content (any size, any split); fetch it with data_to_send()."""
        self._require(ClientState.CONTENT, "send_content")
        assert self._open is not None
        stuffed = self._open.stuffer.feed(chunk)
        if stuffed:
            self._out.append(stuffed)

    def end_content(self) -> list[ClientEvent]:
        """The content is complete: send the final "." and wait for the verdict."""
        self._require(ClientState.CONTENT, "end_content")
        assert self._open is not None
        self._out.append(self._open.stuffer.finish())
        self._note_sent(b".\r\n")
        self.state = ClientState.TRANSACTION
        return self._await_end_of_data(self._open) + self._resume()

    def quit(self) -> list[ClientEvent]:
        """Send QUIT (between transactions, or after a failure that allows it)."""
        if self.state is ClientState.FAILED and self._can_quit:
            self._skip = self._replies_due  # replies to what was pipelined before the failure
        elif self.state is not ClientState.READY:
            raise RuntimeError(f"quit() is not possible in state {self.state.value!r}; "
                               "close the connection instead")
        self.state = ClientState.QUITTING
        self._send(Stage.QUIT, -1, b"QUIT\r\n")
        return self._resume()

    # -- internals ------------------------------------------------------------------------

    def _require(self, state: ClientState, call: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"{call}() needs state {state.value!r}, the session is in "
                               f"{self.state.value!r}; wait for the matching event")

    def _send(self, stage: Stage, index: int, line: bytes) -> None:
        self._out.append(line)
        self._expect.append((stage, index))
        self._note_sent(line)

    def _note_sent(self, line: bytes) -> None:
        if self.transcript is not None:
            self.transcript(Direction.SENT, line.decode("utf-8", "replace").rstrip("\r\n"))

    def _received_line(self, line: str) -> None:
        if self.transcript is not None:
            self.transcript(Direction.RECEIVED, line)

    def _resume(self) -> list[ClientEvent]:
        self._held = False
        return self._parse()

    def _parse(self) -> list[ClientEvent]:
        events: list[ClientEvent] = []
        while not events and self.state not in (ClientState.CLOSED, ClientState.FAILED):
            try:
                reply = self._parser.next_reply()
            except ReplyError as exc:
                return self._fail(self.awaiting, f"protocol error: {exc}")
            if reply is None:
                break
            events = self._on_reply(reply)
        # Every event needs the application's answer before the next reply is read.
        self._held = bool(events)
        return events

    def _on_reply(self, reply: Reply) -> list[ClientEvent]:
        if self._skip:
            self._skip -= 1
            return []
        if not self._expect:
            if reply.code == 421:  # RFC 5321 3.8: the server may close at any time with 421
                return self._fail(None, "the server is closing the connection", reply)
            return self._fail(None, f"protocol error: reply nobody asked for: {reply}")
        stage, index = self._expect.popleft()
        if reply.code == 421 and stage is not Stage.QUIT:
            return self._fail(stage, f"the server is closing the connection in reply to "
                              f"{stage.value}", reply)
        return _HANDLERS[stage](self, reply, index)

    def _on_greeting(self, reply: Reply, _: int) -> list[ClientEvent]:
        self.greeting = reply
        if reply.code != 220:
            # RFC 5321 3.1: a 554 greeting means "no service here"; QUIT and go elsewhere.
            return self._fail(Stage.GREETING, "the server refused the session in its "
                              "greeting", reply, can_quit=True)
        self.state = ClientState.HELLO
        self._hello(Stage.LHLO if self.lmtp else Stage.EHLO)
        return []

    def _hello(self, stage: Stage) -> None:
        self._send(stage, -1, f"{stage.value} {self.local_hostname}\r\n".encode("ascii"))

    def _on_ehlo(self, reply: Reply, _: int) -> list[ClientEvent]:
        if reply.code == 250:
            self.extensions, self.esmtp = parse_extensions(reply), True
            if self.starttls_wanted and not self.tls and self.supports("STARTTLS"):
                self._send(Stage.STARTTLS, -1, b"STARTTLS\r\n")
                return []
            self.state = ClientState.READY
            return [Ready(dict(self.extensions))]
        if reply.code >= 500 and not self.lmtp:  # an old server without ESMTP
            self._hello(Stage.HELO)
            return []
        return self._fail(Stage.LHLO if self.lmtp else Stage.EHLO,
                          "the server refused our EHLO", reply, can_quit=True)

    def _on_helo(self, reply: Reply, _: int) -> list[ClientEvent]:
        if reply.code != 250:
            return self._fail(Stage.HELO, "the server refused EHLO and HELO", reply,
                              can_quit=True)
        self.extensions, self.esmtp = {}, False
        self.state = ClientState.READY
        return [Ready({})]

    def _on_starttls(self, reply: Reply, _: int) -> list[ClientEvent]:
        if reply.code == 220:
            self.state = ClientState.TLS_HANDSHAKE
            dropped = self._parser.discard()
            if dropped and self.transcript is not None:
                self.transcript(Direction.INFO, f"dropped {dropped} plaintext bytes sent "
                                 "after the 220 to STARTTLS")
            return [UpgradeTLS()]
        # Opportunistic TLS: a refusal (454) leaves the plaintext session usable (RFC 3207 4).
        self.state = ClientState.READY
        return [Ready(dict(self.extensions))]

    def _on_rset(self, reply: Reply, _: int) -> list[ClientEvent]:
        if reply.code != 250:
            return self._fail(Stage.RSET, "the server refused RSET; the session state is "
                              "unknown", reply, can_quit=True)
        return self._send_next()

    def _on_mail(self, reply: Reply, _: int) -> list[ClientEvent]:
        txn = self._open
        assert txn is not None
        if reply.code == 250:
            return self._send_next()
        txn.mail_refusal = reply
        for index, outcome in enumerate(txn.outcomes):
            if outcome is None:
                txn.outcomes[index] = RecipientOutcome(txn.spec.recipients[index], reply,
                                                       Stage.MAIL)
        if self._unsent:  # without PIPELINING nothing else was sent: done
            self._unsent.clear()
            return self._finish()
        return []  # the RCPT and DATA replies are still due; they change nothing

    def _on_rcpt(self, reply: Reply, index: int) -> list[ClientEvent]:
        txn = self._open
        assert txn is not None
        if txn.mail_refusal is None:
            if reply.code in (250, 251):  # 251: will forward (RFC 5321 3.4)
                txn.accepted.append(index)
            else:
                txn.outcomes[index] = RecipientOutcome(txn.spec.recipients[index], reply,
                                                       Stage.RCPT)
        return self._send_next()

    def _send_next(self) -> list[ClientEvent]:
        """Without PIPELINING: send the next command of the transaction, if one is due."""
        if not self._unsent:
            return []
        stage, index, line = self._unsent.popleft()
        if stage is Stage.DATA and self._open is not None and not self._open.accepted:
            return self._finish()  # nobody accepted: no DATA; RSET comes before the next MAIL
        self._send(stage, index, line)
        return []

    def _on_data(self, reply: Reply, _: int) -> list[ClientEvent]:
        txn = self._open
        assert txn is not None
        if reply.code == 354:
            if txn.mail_refusal is not None or not txn.accepted:
                # RFC 2920 3.1: some servers say 354 with nobody accepted; end the data at once.
                txn.empty_content = True
                self._out.append(b".\r\n")
                self._note_sent(b".\r\n")
                return self._await_end_of_data(txn)
            self.state = ClientState.CONTENT
            return [SendContent()]
        if txn.mail_refusal is None:
            for index in txn.accepted:
                txn.outcomes[index] = RecipientOutcome(txn.spec.recipients[index], reply,
                                                       Stage.DATA)
        return self._finish()

    def _await_end_of_data(self, txn: _Open) -> list[ClientEvent]:
        txn.end_sent = True
        if not self.lmtp:
            txn.end_replies = 1
        elif not txn.empty_content:
            txn.end_replies = len(txn.accepted)  # RFC 2033 4.2: one reply per accepted RCPT
        else:
            # LMTP after a 354 with nobody accepted: no reply is defined, so the state of
            # the session is unknown and it must not be used again.
            return self._finish() + self._fail(None, "the LMTP server accepted DATA without "
                                               "recipients; session abandoned")
        self._expect.extend((Stage.END_OF_DATA, n) for n in range(txn.end_replies))
        return []

    def _on_end_of_data(self, reply: Reply, number: int) -> list[ClientEvent]:
        txn = self._open
        assert txn is not None
        if not txn.empty_content:
            targets = [txn.accepted[number]] if self.lmtp else txn.accepted
            for index in targets:
                txn.outcomes[index] = RecipientOutcome(txn.spec.recipients[index], reply,
                                                       Stage.END_OF_DATA)
        if number + 1 < txn.end_replies:
            return []
        return self._finish()

    def _on_quit(self, reply: Reply, _: int) -> list[ClientEvent]:
        self.state = ClientState.CLOSED
        return [Closed()]

    def _finish(self) -> list[ClientEvent]:
        txn = self._open
        assert txn is not None
        self._open = None
        self._unsent.clear()
        self.state = ClientState.READY
        return [TransactionDone(tuple(txn.outcomes))]  # type: ignore[arg-type]

    def _fail(self, stage: Stage | None, reason: str, reply: Reply | None = None, *,
              can_quit: bool = False) -> list[ClientEvent]:
        txn = self._open
        decided: tuple[RecipientOutcome | None, ...] = ()
        data_sent = False
        if txn is not None:
            decided = tuple(txn.outcomes)
            # Only silence after the end of data leaves the message in doubt; any reply
            # there (even 421) says it was not taken.
            data_sent = txn.end_sent and reply is None and stage is Stage.END_OF_DATA
        self._open = None
        self._replies_due = len(self._expect)
        self._expect.clear()
        self._unsent.clear()
        self.state = ClientState.FAILED
        self._can_quit = can_quit
        return [SessionFailed(stage, reason, reply, decided, data_sent, can_quit)]

    def _precheck(self, spec: Transaction) -> list[RecipientOutcome | None]:
        """Outcomes decided without asking the peer (see the module docstring)."""
        recipients = spec.recipients
        everyone: Reply | None = None
        limit = self.max_size
        if _CONTROL.search(spec.sender):
            everyone = Reply(501, "5.1.7", "sender address contains a control character")
        elif not spec.sender.isascii() and not self.supports("SMTPUTF8"):
            everyone = Reply(553, "5.6.7", "non-ASCII sender address and the receiving server "
                             "does not offer SMTPUTF8 (RFC 6531)")
        elif limit is not None and spec.size > limit:
            everyone = Reply(552, "5.3.4", f"message size {spec.size} exceeds the limit of "
                             f"{limit} bytes the receiving server announced (RFC 1870)")
        if everyone is not None:
            return [RecipientOutcome(r, everyone, Stage.PRECHECK) for r in recipients]
        outcomes: list[RecipientOutcome | None] = []
        for recipient in recipients:
            refusal = None
            if not recipient or _CONTROL.search(recipient):
                refusal = Reply(501, "5.1.3", "recipient address is empty or contains a "
                                "control character")
            elif not recipient.isascii() and not self.supports("SMTPUTF8"):
                refusal = Reply(553, "5.6.7", "non-ASCII recipient address and the receiving "
                                "server does not offer SMTPUTF8 (RFC 6531)")
            outcomes.append(None if refusal is None
                            else RecipientOutcome(recipient, refusal, Stage.PRECHECK))
        return outcomes

    def _mail_command(self, spec: Transaction, utf8: bool) -> bytes:
        params = ""
        if self.supports("SIZE"):
            params += f" SIZE={spec.size}"
        if spec.eight_bit:
            params += " BODY=8BITMIME"
        if utf8:
            params += " SMTPUTF8"
        params += self._dsn(spec.mail_params, _DSN_MAIL)
        line = f"MAIL FROM:<{spec.sender}>{params}\r\n"
        return line.encode("utf-8" if utf8 else "ascii")

    def _dsn(self, params: Mapping[str, str | None], names: tuple[str, ...]) -> str:
        if not self.supports("DSN"):
            return ""  # RFC 3461 4: never send DSN parameters to a peer that did not offer DSN
        upper = {key.upper(): value for key, value in params.items()}
        text = ""
        for name in names:
            value = upper.get(name)
            if value and not _CONTROL.search(value) and " " not in value:
                text += f" {name}={value}"
        return text



_HANDLERS: dict[Stage, Callable[[ClientConnection, Reply, int], list[ClientEvent]]] = {
    Stage.GREETING: ClientConnection._on_greeting,
    Stage.EHLO: ClientConnection._on_ehlo,
    Stage.LHLO: ClientConnection._on_ehlo,
    Stage.HELO: ClientConnection._on_helo,
    Stage.STARTTLS: ClientConnection._on_starttls,
    Stage.RSET: ClientConnection._on_rset,
    Stage.MAIL: ClientConnection._on_mail,
    Stage.RCPT: ClientConnection._on_rcpt,
    Stage.DATA: ClientConnection._on_data,
    Stage.END_OF_DATA: ClientConnection._on_end_of_data,
    Stage.QUIT: ClientConnection._on_quit,
}


def _all_ascii(spec: Transaction) -> bool:
    return spec.sender.isascii() and all(r.isascii() for r in spec.recipients)
