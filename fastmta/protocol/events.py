"""What the sans-IO server tells the application, one event per thing to act on.

`ServerConnection.receive_data()` and friends return lists of these, in order.
Replies are never events: they are queued inside the connection and fetched with
`data_to_send()`.  Events are small slotted dataclasses; the ones without fields
are still instances (cheap) so `match`/`isinstance` work uniformly.

Message life cycle: DataStart, then any number of DataChunk, then exactly one of
MessageComplete (the application must answer with `accept_message()` or
`reject_message()`; input is held until it does) or MessageAborted (discard what
was written; the client has its reply already).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastmta.protocol.replies import Reply

if TYPE_CHECKING:
    from fastmta.protocol.state import Transaction

__all__ = [
    "Close",
    "CloseReason",
    "DataChunk",
    "DataStart",
    "Event",
    "Helo",
    "MailFrom",
    "MailRejected",
    "MessageAborted",
    "MessageComplete",
    "RcptRejected",
    "RcptTo",
    "StartTLS",
]


class Event:
    """Base class of every event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Helo(Event):
    """HELO or EHLO was accepted; any open transaction was discarded."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """MAIL was accepted: a new transaction is open."""

    address: str  # "" for the null reverse path <>
    params: dict[str, str | None]  # upper-cased names; None for a parameter without a value


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """RCPT was accepted (the policy said yes); also the record kept in Transaction.recipients."""

    address: str
    params: dict[str, str | None]  # NOTIFY, ORCPT (RFC 3461)


@dataclass(frozen=True, slots=True)
class MailRejected(Event):
    """A parsed MAIL was refused (declared SIZE over the limit, a parameter or address the
    session cannot take): for the log and the rejection metrics."""

    address: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class RcptRejected(Event):
    """The recipient policy refused a RCPT (unknown user, relay denied): for the log."""

    address: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class DataStart(Event):
    """The envelope is complete and content follows: open a spool file."""

    transaction: Transaction


@dataclass(frozen=True, slots=True)
class DataChunk(Event):
    """Message content, already dot-unstuffed (DATA) or exactly as sent (BDAT)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageComplete(Event):
    """All content arrived and passed the protocol's checks: store it, then call
    `accept_message(queue_id)` or `reject_message(reply)`."""

    size: int


@dataclass(frozen=True, slots=True)
class MessageAborted(Event):
    """The message begun with DataStart will not complete: discard the partial content.

    Either the protocol refused it (size, bare CR/LF, mail loop), or the client
    reset the transaction between BDAT chunks, or the session timed out.
    `reply` is what the client was told; it is already queued.
    """

    reply: Reply


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """The 220 to STARTTLS is queued: flush it, do the TLS handshake, then call
    `tls_established()`.  Plaintext received after the STARTTLS line was discarded."""


class CloseReason(str, enum.Enum):
    QUIT = "quit"
    TOO_MANY_ERRORS = "too many errors"
    TIMEOUT = "idle timeout"
    EARLY_TALK = "client talked before the greeting"
    SHUTDOWN = "server shutting down"


@dataclass(frozen=True, slots=True)
class Close(Event):
    """Flush what `data_to_send()` returns, then close the connection."""

    reason: CloseReason
