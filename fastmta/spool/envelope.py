"""The envelope the spool stores beside each message, and per-recipient delivery state.

`Envelope` is what the receive side hands to `Spool.new_message` and what delivery
reads back.  It holds plain strings only; addresses are stored exactly as given
(the protocol has already parsed and validated them), so quoted local parts,
UTF-8 (RFC 6531) and the null reverse path `""` round-trip unchanged.

ESMTP parameter names are case-insensitive (RFC 5321 4.1.2, esmtp-keyword): the
spool stores them upper-cased.  A parameter without a value (e.g. SMTPUTF8) has
the value None.

Recipient state only moves forward: PENDING -> DEFERRED (any number of times) ->
DELIVERED or FAILED.  `RANK` orders the states; the file format relies on it to
combine the two places a state can be recorded (see docs/spool.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["RANK", "Envelope", "Recipient", "RecipientState"]


class RecipientState(enum.Enum):
    """Where one recipient stands; the value is the byte stored in the queue file."""

    PENDING = "P"  # not tried yet
    DEFERRED = "R"  # tried, transient failure: retry later
    DELIVERED = "D"  # done: accepted by the next hop or the local mailbox
    FAILED = "F"  # done: permanent failure or expired (a DSN is due)

    @property
    def done(self) -> bool:
        return self is RecipientState.DELIVERED or self is RecipientState.FAILED


RANK = {
    RecipientState.PENDING: 0,
    RecipientState.DEFERRED: 1,
    RecipientState.DELIVERED: 2,
    RecipientState.FAILED: 2,
}


@dataclass(slots=True)
class Recipient:
    """One RCPT TO: the address, its ESMTP parameters and its delivery state."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict)  # e.g. NOTIFY, ORCPT (RFC 3461)
    state: RecipientState = RecipientState.PENDING
    attempts: int = 0  # delivery attempts that ended deferred or failed
    last_attempt: float | None = None  # time of the last recorded attempt
    last_error: str | None = None  # e.g. the remote reply, for the queue listing and DSNs
    remote: str | None = None  # the host that gave last_error, for DSN Remote-MTA

    @property
    def done(self) -> bool:
        return self.state.done


@dataclass(slots=True)
class Envelope:
    """Everything about a message that is not its content."""

    sender: str  # MAIL FROM address; "" is the null reverse path <>
    recipients: list[Recipient]
    mail_params: dict[str, str | None] = field(default_factory=dict)  # SIZE, BODY, SMTPUTF8, RET, ENVID
    client_address: str = ""  # IP of the SMTP client; "" for locally generated mail
    client_name: str = ""  # its verified reverse DNS name, if known
    helo: str = ""  # the HELO/EHLO argument
    protocol: str = "ESMTP"  # SMTP, ESMTP, ESMTPS, ... (RFC 3848); LOCAL for generated mail

    def pending_indices(self) -> list[int]:
        """Indices of the recipients that still need a delivery attempt."""
        return [index for index, rcpt in enumerate(self.recipients) if not rcpt.state.done]
