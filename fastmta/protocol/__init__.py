"""Sans-IO SMTP: the server state machine, its events, replies, paths and trace headers.

No sockets, files or clocks in this package; the transport (fastmta.server)
drives `ServerConnection` with bytes.  This package never imports the spool,
the transport, the policy or the config (docs/architecture.md).
"""

from fastmta.protocol.events import (
    Close,
    CloseReason,
    DataChunk,
    DataStart,
    Event,
    Helo,
    MailFrom,
    MessageAborted,
    MessageComplete,
    RcptTo,
    StartTLS,
)
from fastmta.protocol.received import format_received
from fastmta.protocol.replies import Reply
from fastmta.protocol.server import RecipientPolicyLike, ServerConnection, ServerSettings
from fastmta.protocol.state import PeerInfo, Session, State, Transaction

__all__ = [
    "Close",
    "CloseReason",
    "DataChunk",
    "DataStart",
    "Event",
    "Helo",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "PeerInfo",
    "RcptTo",
    "RecipientPolicyLike",
    "Reply",
    "ServerConnection",
    "ServerSettings",
    "Session",
    "StartTLS",
    "State",
    "Transaction",
    "format_received",
]
