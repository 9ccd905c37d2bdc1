"""Sans-IO SMTP server: bytes in, events and reply bytes out (RFC 5321, 2920, 3030, 3207).

`ServerConnection` knows no sockets, files or clocks.  The transport calls
`greeting()` once, hands every received packet to `receive_data()`, acts on the
returned events, and writes `data_to_send()` (all queued replies, one write per
packet, as PIPELINING wants).  Command order is decided by `state.py`, replies
come from `replies.py`, paths from `address.py`; recipient policy is injected.

Invariants:
- Replies leave in command order.  After MessageComplete the connection holds
  further input, unparsed, until `accept_message()` / `reject_message()`.
- Received bytes reach a parser (LineSplitter for commands, DataReader for
  DATA, exact octet counting for BDAT) in pieces of at most `_MAX_PIECE`, so a
  switch between commands and content never re-copies more than that: many
  tiny pipelined messages or chunks in one packet cost linear time.
- Memory per connection is bounded: the line splitter keeps at most one
  command line, the DATA reader a few bytes, the Received counter 10 bytes;
  unparsed input only accumulates while paused, and `input_buffered` tells the
  transport when to stop reading.
- Plaintext pipelined after STARTTLS is dropped, never executed (RFC 3207 5,
  CVE-2011-0411).  Content after a refusal is drained, never read as commands.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fastmta.kernels import (
    LINE_BARE_CR,
    LINE_NUL,
    LINE_TOO_LONG,
    DataReader,
    LineSplitter,
)
from fastmta.protocol import replies
from fastmta.protocol.address import (
    DSN_PARAMETERS,
    PathError,
    parse_mail_argument,
    parse_rcpt_argument,
)
from fastmta.protocol.events import (
    Close,
    CloseReason,
    DataChunk,
    DataStart,
    Event,
    Helo,
    MailFrom,
    MailRejected,
    MessageAborted,
    MessageComplete,
    RcptRejected,
    RcptTo,
    StartTLS,
)
from fastmta.protocol.received import ReceivedCounter
from fastmta.protocol.replies import Reply
from fastmta.protocol.state import (
    COMMAND_STATES,
    PeerInfo,
    Session,
    State,
    Transaction,
    sequence_refusal,
)

__all__ = ["PARAMETER_LINE_ALLOWANCE", "RecipientPolicyLike", "ServerConnection", "ServerSettings"]

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF, and each
# extension that adds parameters says by how much it lengthens MAIL and RCPT.  From
# what we advertise in EHLO:
#   MAIL  SIZE=n (RFC 1870 4)                      +26
#         BODY=8BITMIME|BINARYMIME (RFC 6152, 3030) +16
#         SMTPUTF8 (RFC 6531 3.4)                   +10
#         RET=, ENVID= (RFC 3461 4, with DSN)       +100  -> 512 + 152 = 664
#   RCPT  NOTIFY=, ORCPT= (RFC 3461 4, with DSN)   +500  -> 512 + 500 = 1012
# Every other command keeps 512.  A longer line gets 500 5.5.2, whatever it holds.
MAIL_LINE_ALLOWANCE = 26 + 16 + 10
DSN_MAIL_LINE_ALLOWANCE = 100
DSN_RCPT_LINE_ALLOWANCE = 500
PARAMETER_LINE_ALLOWANCE = DSN_RCPT_LINE_ALLOWANCE  # the largest: the line splitter's margin
# Commands that move no mail.  Past `max_junk_commands` of them (counted from the start of
# the session or the last accepted message) each one also counts as an error, as with
# Postfix's smtpd_junk_command_limit, so they cannot hold a connection slot forever.
_JUNK_VERBS = frozenset({b"NOOP", b"RSET", b"HELP", b"VRFY", b"EXPN"})
_MAX_PIECE = 64 * 1024

# Fast paths for the forms of MAIL and RCPT nearly every client sends: an ASCII
# dot-atom local part at a domain of at most 63 octets (so no length rule of
# address.py applies), MAIL with at most SIZE and BODY.  They give exactly what
# address.py's general parser gives for those forms (a property test checks it),
# without its UTF-8 decode and parameter table; anything else goes to address.py.
_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"  # RFC 5321 4.1.2 atext, ASCII
_LABEL = rb"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_PATH = re.compile(rb"<(%s(?:\.%s)*@(%s(?:\.%s)*))>" % (_ATEXT, _ATEXT, _LABEL, _LABEL))
_BODY_VALUES = frozenset({b"7BIT", b"8BITMIME", b"BINARYMIME"})


def _simple_mail(arg: bytes) -> tuple[str, dict[str, str | None]] | None:
    """(address, params) of "FROM:<local@domain>[ SIZE=n][ BODY=x]", or None."""
    if arg[:5].upper() != b"FROM:":
        return None
    match = _SIMPLE_PATH.match(arg, 5)
    if match is None or len(match.group(2)) > 63:
        return None
    params: dict[str, str | None] = {}
    rest = arg[match.end():]
    if rest:
        if rest[0] != 0x20:
            return None
        for token in rest[1:].split(b" "):
            keyword, _, value = token.partition(b"=")
            name = keyword.upper()
            if name == b"SIZE" and value.isdigit() and len(value) <= 20 and "SIZE" not in params:
                params["SIZE"] = str(int(value))
            elif name == b"BODY" and value.upper() in _BODY_VALUES and "BODY" not in params:
                params["BODY"] = value.upper().decode("ascii")
            else:
                return None
    return match.group(1).decode("ascii"), params


def _simple_rcpt(arg: bytes) -> str | None:
    """The address of "TO:<local@domain>" without parameters, or None."""
    if arg[:3].upper() != b"TO:":
        return None
    match = _SIMPLE_PATH.match(arg, 3)
    if match is None or match.end() != len(arg) or len(match.group(2)) > 63:
        return None
    return match.group(1).decode("ascii")


class RecipientPolicyLike(Protocol):
    """What the server asks about recipients (fastmta.policy.RecipientPolicy provides it)."""

    def check_recipient(self, address: str, client_ip: str) -> Reply | None: ...

    def verify(self, address: str) -> Reply: ...

    def expand(self, name: str) -> Reply: ...


@dataclass(frozen=True)
class ServerSettings:
    """The protocol's limits and switches; the transport builds it from fastmta.config.Config."""

    hostname: str
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 1000  # RFC 5321 4.5.3.1.8 asks for at least 100
    max_errors: int = 20
    max_received_headers: int = 50
    max_command_line: int = 512  # RFC 5321 4.5.3.1.4, including CRLF
    max_data_line: int = 1000  # RFC 5321 4.5.3.1.6; longer lines are counted, not refused
    bare_line_endings: str = "reject"  # or "normalise"
    tls_available: bool = False
    vrfy_enabled: bool = False
    expn_enabled: bool = False
    dsn_enabled: bool = True  # advertise DSN and keep RET/ENVID/NOTIFY/ORCPT (RFC 3461)
    max_junk_commands: int = 100  # NOOP/RSET/HELP/VRFY/EXPN before each counts as an error
    _ehlo: tuple[Reply, Reply] = field(init=False, repr=False, compare=False)
    # the longest MAIL and RCPT lines, without CRLF (see MAIL_LINE_ALLOWANCE)
    long_line_limits: dict[bytes, int] = field(init=False, repr=False, compare=False)
    too_big: Reply = field(init=False, repr=False, compare=False)  # 552 naming the limit

    def __post_init__(self) -> None:
        host = self.hostname
        if not host or not host.isascii() or not host.isprintable() or " " in host:
            raise ValueError(f"hostname must be a domain name without spaces, got {host!r}")
        for name in ("max_message_size", "max_recipients", "max_errors", "max_received_headers",
                     "max_junk_commands"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_command_line < 512:
            raise ValueError("max_command_line must be at least 512 (RFC 5321 4.5.3.1.4)")
        if self.max_data_line < 1000:
            raise ValueError("max_data_line must be at least 1000 (RFC 5321 4.5.3.1.6)")
        if self.bare_line_endings not in ("reject", "normalise"):
            raise ValueError("bare_line_endings must be 'reject' or 'normalise', "
                             f"got {self.bare_line_endings!r}")
        keywords = ["{host}", f"SIZE {self.max_message_size}", "8BITMIME", "PIPELINING",
                    "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "BINARYMIME"]
        if self.dsn_enabled:
            keywords.append("DSN")
        plain = Reply(250, "", "\n".join(keywords + ["HELP"]))
        with_tls = Reply(250, "", "\n".join(keywords + ["STARTTLS", "HELP"]))
        object.__setattr__(self, "_ehlo", (plain, with_tls))
        object.__setattr__(self, "too_big", replies.message_too_big(self.max_message_size))
        dsn = self.dsn_enabled
        base = self.max_command_line - 2
        object.__setattr__(self, "long_line_limits", {
            b"MAIL": base + MAIL_LINE_ALLOWANCE + (DSN_MAIL_LINE_ALLOWANCE if dsn else 0),
            b"RCPT": base + (DSN_RCPT_LINE_ALLOWANCE if dsn else 0),
        })

    def ehlo_reply(self, offer_tls: bool) -> Reply:
        """The multiline 250 to EHLO, listing our extensions (RFC 5321 4.1.1.1)."""
        return self._ehlo[offer_tls]


class ServerConnection:
    """One SMTP session on the receiving side, as a state machine over bytes."""

    __slots__ = (
        "_bdat_size",
        "_binary",
        "_chunk_last",
        "_chunk_refusal",
        "_chunk_remaining",
        "_chunk_return",
        "_chunk_size",
        "_content_size",
        "_cr_held",
        "_errors",
        "_events",
        "_host",
        "_inbox",
        "_inbox_pos",
        "_junk",
        "_line_limit",
        "_lines",
        "_long_limits",
        "_normalise",
        "_out",
        "_reader",
        "_received",
        "_refusal",
        "_state",
        "peer",
        "policy",
        "session",
        "settings",
        "transaction",
    )

    def __init__(self, settings: ServerSettings, policy: RecipientPolicyLike, peer: PeerInfo) -> None:
        self.settings = settings
        self.policy = policy
        self.peer = peer
        self.session = Session(peer)
        self.transaction: Transaction | None = None
        self._state = State.INITIAL
        self._host = settings.hostname
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._errors = 0
        self._normalise = settings.bare_line_endings == "normalise"
        self._binary = False  # the open transaction has BODY=BINARYMIME
        self._lines = LineSplitter(settings.max_command_line + PARAMETER_LINE_ALLOWANCE)
        self._line_limit = settings.max_command_line - 2  # without the CRLF
        self._long_limits = settings.long_line_limits
        self._junk = 0  # junk commands since the session began or a message was accepted
        self._inbox: deque[bytes] = deque()  # received, not yet given to a parser
        self._inbox_pos = 0  # bytes of _inbox[0] already given
        self._reader: DataReader | None = None
        self._received = ReceivedCounter()
        self._refusal: Reply | None = None  # the message being received is refused: drain it
        self._content_size = 0
        self._bdat_size = 0  # octets announced by this message's BDAT commands
        self._chunk_size = 0
        self._chunk_remaining = 0
        self._chunk_last = False
        self._chunk_refusal: Reply | None = None  # BDAT refused: skip its octets, then reply
        self._chunk_return = State.READY
        self._cr_held = False  # BDAT content ended in CR: its LF may open the next piece

    # --- public API ----------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def input_buffered(self) -> int:
        """Received bytes not processed yet; pause reading when this grows large."""
        inbox = self._inbox
        if not inbox:  # the usual case: everything received was parsed
            return self._lines.buffered
        return self._lines.buffered + sum(map(len, inbox)) - self._inbox_pos

    def greeting(self) -> None:
        """Queue the 220 greeting (RFC 5321 4.3.1); call once, when the client connects."""
        if self._state is not State.INITIAL:
            raise RuntimeError("greeting() is called once, before any other input")
        self._state = State.GREETED
        self._out.append(replies.GREETING.to_bytes(self._host))

    def early_talk(self) -> list[Event]:
        """The client sent bytes before the greeting: queue 554 and Close."""
        events = self._events = []
        if self._state is not State.CLOSED:
            self._close(replies.EARLY_TALK, CloseReason.EARLY_TALK)
        return events

    def receive_data(self, data: bytes) -> list[Event]:
        """Process received bytes; return the events they caused, in order."""
        state = self._state
        events: list[Event] = []
        if state is State.CLOSED or state is State.WAIT_TLS or not data:
            return events  # after close, or plaintext after STARTTLS: dropped
        if state is State.INITIAL:
            return self.early_talk()
        self._events = events
        self._inbox.append(data)
        if state is not State.WAIT_MESSAGE:
            self._pump()
        return events

    def data_to_send(self) -> bytes:
        """Every reply queued so far, joined for one write; empties the queue."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def accept_message(self, queue_id: str) -> list[Event]:
        """The message of the last MessageComplete is stored: send 250 and go on."""
        if self._state is State.CLOSED:
            return []
        if self._state is not State.WAIT_MESSAGE:
            raise RuntimeError("accept_message() answers a MessageComplete event; none is pending")
        if not queue_id or not queue_id.isascii() or not queue_id.isprintable() or " " in queue_id:
            raise ValueError(f"queue id must be printable ASCII without spaces, got {queue_id!r}")
        self._junk = 0  # a client that delivers mail earns a new allowance, as in Postfix
        return self._answer_message(replies.queued_wire(queue_id))

    def reject_message(self, reply: Reply) -> list[Event]:
        """The message could not be stored (e.g. replies.SPOOL_FAILURE): send `reply`, go on."""
        if self._state is State.CLOSED:
            return []
        if self._state is not State.WAIT_MESSAGE:
            raise RuntimeError("reject_message() answers a MessageComplete event; none is pending")
        if not reply.is_error:
            raise ValueError(f"reject_message() needs a 4xx or 5xx reply, got {reply}")
        return self._answer_message(reply.to_bytes(self._host))

    def tls_established(self) -> list[Event]:
        """The TLS handshake after StartTLS succeeded: forget the session (RFC 3207 4.2)."""
        if self._state is not State.WAIT_TLS:
            raise RuntimeError("tls_established() follows a StartTLS event")
        self.session = Session(self.peer, tls=True)
        self.transaction = None
        self._drop_input()  # again: nothing from before the handshake may survive it
        self._state = State.GREETED  # no new greeting; the client must EHLO again
        return []

    def timeout(self) -> list[Event]:
        """The client was idle too long (RFC 5321 4.5.3.2): queue 421 4.4.2 and Close."""
        events = self._events = []
        if self._state is not State.CLOSED:
            self._close(replies.IDLE_TIMEOUT, CloseReason.TIMEOUT)
        return events

    def shutdown(self) -> list[Event]:
        """The server is stopping: queue 421 4.3.2 and Close."""
        events = self._events = []
        if self._state is not State.CLOSED:
            self._close(replies.SHUTTING_DOWN, CloseReason.SHUTDOWN)
        return events

    def connection_lost(self) -> None:
        """The transport closed; any further input is ignored."""
        self._state = State.CLOSED
        self._inbox.clear()
        self._lines.take_rest()

    # --- input plumbing --------------------------------------------------------------

    def _pump(self) -> None:
        """Hand buffered input to whichever parser the state calls for, until it runs out
        or the connection pauses."""
        lines = self._lines
        while True:
            state = self._state
            if state in COMMAND_STATES:
                item = lines.next_line()
                if item is None:
                    piece = self._next_piece()
                    if not piece:
                        return
                    lines.feed(piece)
                    continue
                self._command(item[0], item[1])
                state = self._state
                if state is State.DATA or state is State.CHUNK:
                    rest = lines.take_rest()  # at most one piece plus a line
                    if rest:
                        rest = self._content(rest)
                        if rest:
                            lines.feed(rest)
            elif state is State.DATA or state is State.CHUNK:
                piece = self._next_piece()
                if not piece:
                    return
                rest = self._content(piece)
                if rest:
                    lines.feed(rest)  # what followed the message: commands again
            else:
                return  # paused (WAIT_MESSAGE, WAIT_TLS) or closed

    def _next_piece(self) -> bytes:
        inbox = self._inbox
        while inbox:
            head = inbox[0]
            pos = self._inbox_pos
            if pos == 0 and len(head) <= _MAX_PIECE:
                inbox.popleft()
                return head
            end = pos + _MAX_PIECE
            if end >= len(head):
                inbox.popleft()
                self._inbox_pos = 0
            else:
                self._inbox_pos = end
            if pos < len(head):
                return head[pos:end]
        return b""

    def _drop_input(self) -> None:
        self._inbox.clear()
        self._inbox_pos = 0
        self._lines.take_rest()

    def _content(self, piece: bytes) -> bytes:
        if self._state is State.DATA:
            return self._data_content(piece)
        return self._chunk_content(piece)

    # --- replies, errors, closing -----------------------------------------------------

    def _send(self, reply: Reply) -> None:
        """Queue a reply to the client's command; 4xx/5xx count toward max_errors."""
        self._out.append(reply.to_bytes(self._host))
        if reply.code >= 400 and reply is not replies.TOO_MANY_RECIPIENTS:
            self._count_error()

    def _count_error(self) -> None:
        """One more error; at max_errors the session closes with 421 after the replies so far."""
        self._errors += 1
        if self._errors >= self.settings.max_errors and self._state is not State.CLOSED:
            self._close(replies.TOO_MANY_ERRORS, CloseReason.TOO_MANY_ERRORS)

    def _close(self, reply: Reply, reason: CloseReason) -> None:
        self._abort_open_message(reply)
        self._out.append(reply.to_bytes(self._host))
        self._state = State.CLOSED
        self._drop_input()
        self._events.append(Close(reason))

    def _abort_open_message(self, reply: Reply) -> None:
        """Tell the application a message it has begun storing will not complete."""
        if self._state in (State.DATA, State.CHUNK, State.BDAT) and self._chunk_refusal is None:
            self._events.append(MessageAborted(reply))

    def _end_transaction(self) -> None:
        self.transaction = None
        self._binary = False
        self._reader = None
        self._refusal = None
        self._cr_held = False
        self._state = State.READY

    def _answer_message(self, wire: bytes) -> list[Event]:
        events = self._events = []
        self._end_transaction()
        self._out.append(wire)  # the application's answer: not the client's error
        self._pump()
        return events

    # --- commands ----------------------------------------------------------------------

    def _command(self, line: bytes, flags: int) -> None:
        if flags:
            if flags & LINE_TOO_LONG:
                return self._send(replies.LINE_TOO_LONG)
            if flags & LINE_NUL:
                return self._send(replies.NUL_IN_COMMAND)
            if flags & LINE_BARE_CR or not self._normalise:  # normalising accepts a lone LF end
                return self._send(replies.BARE_LINE_END_COMMAND)
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        handler = _HANDLERS.get(verb)
        if handler is None:
            return self._send(replies.UNKNOWN_COMMAND)
        if len(line) > self._line_limit and len(line) > self._long_limits.get(verb, 0):
            return self._send(replies.LINE_TOO_LONG)
        if verb != b"BDAT":  # BDAT must learn its size first, to skip a refused chunk
            refusal = sequence_refusal(self._state, verb, self._binary)
            if refusal is not None:
                return self._send(refusal)
        if verb not in _JUNK_VERBS:
            return handler(self, arg)
        errors = self._errors
        handler(self, arg)  # its reply is the same past the limit
        self._junk += 1
        if self._junk > self.settings.max_junk_commands and self._errors == errors \
                and self._state is not State.CLOSED:
            self._count_error()  # one error per junk command, even if its reply was not one

    def _hello(self, arg: bytes, extended: bool) -> None:
        name = arg.strip(b" \t")
        if not name:
            return self._send(replies.SYNTAX_EHLO if extended else replies.SYNTAX_HELO)
        session = self.session
        reply = self.settings.ehlo_reply(self.settings.tls_available and not session.tls) \
            if extended else replies.HELO_OK
        self._abort_open_message(reply)  # RFC 5321 4.1.4: EHLO resets like RSET
        self._end_transaction()
        text = name.decode("utf-8", "replace")
        session.helo = text
        session.extended = extended
        self._send(reply)
        self._events.append(Helo(text, extended))

    def _helo(self, arg: bytes) -> None:
        self._hello(arg, False)

    def _ehlo(self, arg: bytes) -> None:
        self._hello(arg, True)

    def _mail(self, arg: bytes) -> None:
        simple = _simple_mail(arg)
        if simple is not None:
            address, params = simple
        else:
            if arg[:5].upper() != b"FROM:":
                return self._send(replies.SYNTAX_MAIL)
            try:
                address, params = parse_mail_argument(arg[5:].decode("utf-8"))
            except UnicodeDecodeError:
                return self._send(replies.BAD_SENDER_SYNTAX)
            except PathError as exc:
                return self._send(exc.reply)
        smtputf8 = "SMTPUTF8" in params
        if not smtputf8 and not address.isascii():
            return self._refuse_mail(address, replies.NON_ASCII_ADDRESS)
        if not self.settings.dsn_enabled and not DSN_PARAMETERS.isdisjoint(params):
            return self._refuse_mail(address, replies.UNKNOWN_PARAMETER)
        size = params.get("SIZE")
        declared = int(size) if size is not None else None
        if declared is not None and declared > self.settings.max_message_size:
            return self._refuse_mail(address, self.settings.too_big)  # RFC 1870 6.1
        body = params.get("BODY") or "7BIT"
        session = self.session
        self.transaction = Transaction(address, params, session.helo or "", session.extended,
                                       session.tls, smtputf8, body, declared)
        self._binary = body == "BINARYMIME"
        self._state = State.MAIL
        self._send(replies.SENDER_OK)
        self._events.append(MailFrom(address, params))

    def _refuse_mail(self, address: str, reply: Reply) -> None:
        self._events.append(MailRejected(address, reply))
        self._send(reply)

    def _rcpt(self, arg: bytes) -> None:
        simple = _simple_rcpt(arg)
        params: dict[str, str | None] = {}
        if simple is not None:
            address = simple
        else:
            if arg[:3].upper() != b"TO:":
                return self._send(replies.SYNTAX_RCPT)
            try:
                address, params = parse_rcpt_argument(arg[3:].decode("utf-8"))
            except UnicodeDecodeError:
                return self._send(replies.BAD_RECIPIENT_SYNTAX)
            except PathError as exc:
                return self._send(exc.reply)
        transaction = self.transaction
        assert transaction is not None  # the state table allows RCPT only inside one
        if not transaction.smtputf8 and not address.isascii():
            return self._send(replies.NON_ASCII_ADDRESS)
        if not self.settings.dsn_enabled and not DSN_PARAMETERS.isdisjoint(params):
            return self._send(replies.UNKNOWN_PARAMETER)
        if len(transaction.recipients) >= self.settings.max_recipients:
            return self._send(replies.TOO_MANY_RECIPIENTS)
        refusal = self.policy.check_recipient(address, self.peer.ip)
        if refusal is not None:
            self._events.append(RcptRejected(address, refusal))
            return self._send(refusal)
        recipient = RcptTo(address, params)
        transaction.recipients.append(recipient)
        self._state = State.RCPT
        self._send(replies.RECIPIENT_OK)
        self._events.append(recipient)

    def _rset(self, arg: bytes) -> None:
        if arg.strip():
            return self._send(replies.SYNTAX_RSET)
        if self._state is not State.GREETED:
            self._abort_open_message(replies.RESET_OK)
            self._end_transaction()
        self._send(replies.RESET_OK)

    def _noop(self, arg: bytes) -> None:
        self._send(replies.OK)  # RFC 5321 4.1.1.9: an argument is allowed and ignored

    def _quit(self, arg: bytes) -> None:
        self._close(replies.BYE, CloseReason.QUIT)

    def _help(self, arg: bytes) -> None:
        self._send(replies.HELP)

    def _vrfy(self, arg: bytes) -> None:
        target = arg.strip()
        if not target:
            return self._send(replies.SYNTAX_VRFY)
        if not self.settings.vrfy_enabled:
            return self._send(replies.VRFY_CANNOT)  # RFC 5321 3.5.3: 252, no disclosure
        self._send(self.policy.verify(target.decode("utf-8", "replace")))

    def _expn(self, arg: bytes) -> None:
        if not self.settings.expn_enabled:
            return self._send(replies.EXPN_DISABLED)
        target = arg.strip()
        if not target:
            return self._send(replies.SYNTAX_EXPN)
        self._send(self.policy.expand(target.decode("utf-8", "replace")))

    def _not_implemented(self, arg: bytes) -> None:
        self._send(replies.NOT_IMPLEMENTED)

    def _starttls(self, arg: bytes) -> None:
        if arg.strip():
            return self._send(replies.SYNTAX_STARTTLS)
        if not self.settings.tls_available:
            return self._send(replies.TLS_UNAVAILABLE)
        if self.session.tls:
            return self._send(replies.TLS_ACTIVE)
        self._send(replies.TLS_GO)
        self._drop_input()  # plaintext pipelined after STARTTLS: CVE-2011-0411
        self._state = State.WAIT_TLS
        self._events.append(StartTLS())

    # --- DATA (RFC 5321 4.1.1.4) -----------------------------------------------------

    def _data(self, arg: bytes) -> None:
        if arg.strip():
            return self._send(replies.SYNTAX_DATA)
        self._start_message()
        self._reader = DataReader(self.settings.max_data_line, self._normalise)
        self._state = State.DATA
        self._send(replies.START_DATA)

    def _start_message(self) -> None:
        assert self.transaction is not None
        self._received.reset()
        self._refusal = None
        self._content_size = 0
        self._bdat_size = 0
        self._cr_held = False
        self._events.append(DataStart(self.transaction))

    def _data_content(self, piece: bytes) -> bytes:
        reader = self._reader
        assert reader is not None
        content = reader.feed(piece)
        if content and self._refusal is None:
            if reader.size > self.settings.max_message_size:
                self._refusal = self.settings.too_big  # drained, refused at the end
            elif (reader.bare_lf or reader.bare_cr) and not self._normalise:
                self._refusal = replies.BARE_LINE_END_DATA
            elif not self._received.done and \
                    self._received.feed(content) > self.settings.max_received_headers:
                self._refusal = replies.MAIL_LOOP
            else:
                self._events.append(DataChunk(content))
        if not reader.done:
            return b""
        self._content_size = reader.size
        rest = reader.take_rest()  # pipelined commands after the end marker
        self._finish_message()
        return rest if self._state is not State.CLOSED else b""

    def _finish_message(self) -> None:
        refusal = self._refusal
        if refusal is None:
            self._state = State.WAIT_MESSAGE
            self._events.append(MessageComplete(self._content_size))
            return
        self._events.append(MessageAborted(refusal))
        self._end_transaction()
        self._send(refusal)

    # --- BDAT (RFC 3030) ---------------------------------------------------------------

    def _bdat(self, arg: bytes) -> None:
        words = arg.split()
        if not 1 <= len(words) <= 2 or not words[0].isdigit() or len(words[0]) > 20 or \
                (len(words) == 2 and words[1].upper() != b"LAST"):
            return self._send(replies.SYNTAX_BDAT)  # size unknown: nothing can be skipped
        size = int(words[0])
        state = self._state
        refusal = sequence_refusal(state, b"BDAT")
        if refusal is None and state is State.RCPT:
            self._start_message()
        if refusal is None:
            self._bdat_size += size
            if self._refusal is None and self._bdat_size > self.settings.max_message_size:
                self._refusal = self.settings.too_big
        self._chunk_size = self._chunk_remaining = size
        self._chunk_last = len(words) == 2
        self._chunk_refusal = refusal
        self._chunk_return = state
        self._state = State.CHUNK
        if size == 0:
            self._chunk_done()

    def _chunk_content(self, piece: bytes) -> bytes:
        remaining = self._chunk_remaining
        rest = b""
        if len(piece) > remaining:
            piece, rest = piece[:remaining], piece[remaining:]
        self._chunk_remaining = remaining - len(piece)
        if self._refusal is None and self._chunk_refusal is None:
            self._chunk_bytes(piece)
        if self._chunk_remaining == 0:
            self._chunk_done()
        return rest if self._state is not State.CLOSED else b""

    def _chunk_bytes(self, piece: bytes) -> None:
        if not self._binary:  # BINARYMIME content has no lines to check (RFC 3030 3)
            if self._cr_held:
                piece = b"\r" + piece
                self._cr_held = False
            if piece.endswith(b"\r"):  # its LF may start the next piece
                piece = piece[:-1]
                self._cr_held = True
            crlf = piece.count(b"\r\n")
            if piece.count(b"\n") != crlf or piece.count(b"\r") != crlf:
                if not self._normalise:
                    self._refusal = replies.BARE_LINE_END_DATA
                    return
                piece = _normalise_line_ends(piece)
        if not self._received.done and \
                self._received.feed(piece) > self.settings.max_received_headers:
            self._refusal = replies.MAIL_LOOP
            return
        if piece:
            self._content_size += len(piece)
            self._events.append(DataChunk(piece))

    def _chunk_done(self) -> None:
        refusal = self._chunk_refusal
        if refusal is not None:  # a refused BDAT: its octets are skipped, now reply
            self._chunk_refusal = None
            self._state = self._chunk_return
            return self._send(refusal)
        if self._chunk_last:
            if self._cr_held and self._refusal is None:
                self._cr_held = False
                if not self._normalise:
                    self._refusal = replies.BARE_LINE_END_DATA
                else:
                    self._content_size += 2
                    self._events.append(DataChunk(b"\r\n"))
            return self._finish_message()
        if self._refusal is not None:  # RFC 3030 2: a failed chunk ends the transaction
            return self._finish_message()
        self._state = State.BDAT
        self._send(replies.chunk_received(self._chunk_size))


def _normalise_line_ends(data: bytes) -> bytes:
    """Every lone CR or LF becomes CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


_Handler = Callable[[ServerConnection, bytes], None]
_HANDLERS: dict[bytes, _Handler] = {
    b"HELO": ServerConnection._helo,
    b"EHLO": ServerConnection._ehlo,
    b"MAIL": ServerConnection._mail,
    b"RCPT": ServerConnection._rcpt,
    b"DATA": ServerConnection._data,
    b"BDAT": ServerConnection._bdat,
    b"RSET": ServerConnection._rset,
    b"NOOP": ServerConnection._noop,
    b"QUIT": ServerConnection._quit,
    b"HELP": ServerConnection._help,
    b"VRFY": ServerConnection._vrfy,
    b"EXPN": ServerConnection._expn,
    b"STARTTLS": ServerConnection._starttls,
    b"TURN": ServerConnection._not_implemented,
    b"SEND": ServerConnection._not_implemented,
    b"SOML": ServerConnection._not_implemented,
    b"SAML": ServerConnection._not_implemented,
}
