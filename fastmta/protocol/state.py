"""Where an SMTP session stands, and which commands may come next.

Everything that decides command order lives here (RFC 5321 4.1.4, RFC 3030 for
BDAT, RFC 3207 for STARTTLS): `ALLOWED` maps each command-reading state to the
verbs legal in it, and `sequence_refusal()` is the only function that picks a
503 (or the 554 "no valid recipients" of RFC 5321 3.3).  A verb missing from the
table is refused, so the machine fails closed.

Also the plain records the server keeps: `PeerInfo` (who connected), `Session`
(HELO name, EHLO?, TLS?) and `Transaction` (the envelope being built).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastmta.protocol import replies
from fastmta.protocol.replies import Reply

if TYPE_CHECKING:
    from fastmta.protocol.events import RcptTo

__all__ = [
    "ALLOWED",
    "COMMAND_STATES",
    "IN_TRANSACTION",
    "PeerInfo",
    "Session",
    "State",
    "Transaction",
    "sequence_refusal",
]


class State(enum.Enum):
    INITIAL = "connected, greeting not sent yet"
    GREETED = "greeting sent, waiting for HELO/EHLO"
    READY = "HELO/EHLO done, no transaction"
    MAIL = "MAIL accepted, waiting for RCPT"
    RCPT = "at least one RCPT accepted"
    BDAT = "between BDAT chunks of one message"
    DATA = "reading DATA content"
    CHUNK = "reading the octets of one BDAT chunk"
    WAIT_MESSAGE = "message received, waiting for the application to store it"
    WAIT_TLS = "220 to STARTTLS sent, waiting for the TLS handshake"
    CLOSED = "closed or closing; input is ignored"

    # Members are singletons, so identity hashing is exact, and it runs in C;
    # Enum's own __hash__ is Python code, and the server looks states up per command.
    __hash__ = object.__hash__


# RFC 5321 4.1.4: NOOP, HELP, EXPN, VRFY and RSET work at any time, even before
# HELO; QUIT always ends the session; the obsolete commands always get 502.
ANY_TIME = frozenset({b"NOOP", b"HELP", b"EXPN", b"VRFY", b"RSET", b"QUIT",
                      b"TURN", b"SEND", b"SOML", b"SAML"})
_HELLO = frozenset({b"HELO", b"EHLO"})

ALLOWED: dict[State, frozenset[bytes]] = {
    State.GREETED: ANY_TIME | _HELLO,
    State.READY: ANY_TIME | _HELLO | {b"MAIL", b"STARTTLS"},
    State.MAIL: ANY_TIME | _HELLO | {b"RCPT"},
    State.RCPT: ANY_TIME | _HELLO | {b"RCPT", b"DATA", b"BDAT"},
    # RFC 3030 section 2: once BDAT has started, only more BDAT (or a reset) goes on.
    State.BDAT: ANY_TIME | _HELLO | {b"BDAT"},
}

# States in which input is parsed as commands.
COMMAND_STATES = frozenset(ALLOWED)
# States in which a MAIL transaction is open (RSET or EHLO discard it).
IN_TRANSACTION = frozenset({State.MAIL, State.RCPT, State.BDAT})

_REFUSALS: dict[tuple[State, bytes], Reply] = {
    (State.READY, b"RCPT"): replies.NEED_MAIL,
    (State.READY, b"DATA"): replies.NEED_MAIL,
    (State.READY, b"BDAT"): replies.NEED_MAIL,
    (State.MAIL, b"MAIL"): replies.NESTED_MAIL,
    (State.MAIL, b"DATA"): replies.NO_VALID_RECIPIENTS,
    (State.MAIL, b"BDAT"): replies.NO_VALID_RECIPIENTS,
    (State.MAIL, b"STARTTLS"): replies.TLS_IN_TRANSACTION,
    (State.RCPT, b"MAIL"): replies.NESTED_MAIL,
    (State.RCPT, b"STARTTLS"): replies.TLS_IN_TRANSACTION,
    (State.BDAT, b"MAIL"): replies.NESTED_MAIL,
    (State.BDAT, b"RCPT"): replies.RCPT_AFTER_BDAT,
    (State.BDAT, b"DATA"): replies.DATA_AFTER_BDAT,
    (State.BDAT, b"STARTTLS"): replies.TLS_IN_TRANSACTION,
}


def sequence_refusal(state: State, verb: bytes, binarymime: bool = False) -> Reply | None:
    """None if `verb` may come now; otherwise the reply that refuses it.

    `binarymime` is whether the open transaction declared BODY=BINARYMIME, which
    RFC 3030 section 3 allows only with BDAT.
    """
    if verb in ALLOWED[state]:
        if binarymime and verb == b"DATA":
            return replies.BINARYMIME_NEEDS_BDAT
        return None
    if state is State.GREETED:
        return replies.NEED_HELO
    return _REFUSALS.get((state, verb), replies.BAD_SEQUENCE)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """The SMTP client: its IP address and port, and its reverse DNS name if verified."""

    ip: str
    port: int = 0
    host: str | None = None


@dataclass(slots=True)
class Session:
    """What the client has told us about itself; reset by a STARTTLS handshake."""

    peer: PeerInfo
    helo: str | None = None
    extended: bool = False  # EHLO rather than HELO
    tls: bool = False


@dataclass(slots=True)
class Transaction:
    """The envelope of the message being received (RFC 5321 3.3)."""

    sender: str  # "" is the null reverse path <>
    mail_params: dict[str, str | None]
    helo: str
    extended: bool
    tls: bool
    smtputf8: bool = False
    body: str = "7BIT"  # 7BIT, 8BITMIME or BINARYMIME (RFC 6152, RFC 3030)
    declared_size: int | None = None  # the SIZE parameter (RFC 1870)
    recipients: list[RcptTo] = field(default_factory=list)

    @property
    def protocol_name(self) -> str:
        """The Received "with" keyword: SMTP, ESMTP, ESMTPS (RFC 3848) or UTF8SMTP[S] (RFC 6531 4.3)."""
        if self.smtputf8:
            return "UTF8SMTPS" if self.tls else "UTF8SMTP"
        if self.tls:  # STARTTLS is itself an extension, so TLS implies ESMTP
            return "ESMTPS"
        return "ESMTP" if self.extended else "SMTP"
