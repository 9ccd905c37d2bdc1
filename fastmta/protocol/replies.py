"""Every SMTP reply the server sends, as `Reply(code, enhanced, text)` constants.

Owns the wire form of replies (RFC 5321 4.2) and their enhanced status codes
(RFC 3463, advertised as ENHANCEDSTATUSCODES, RFC 2034).

Invariants:
- Every 2xx/4xx/5xx reply carries an enhanced code; RFC 2034 section 4 leaves
  it off the 220 greeting, the HELO/EHLO answers and 3xx intermediate replies,
  so those constants have `enhanced == ""`.
- `text` never contains CR or LF; a "\\n" in it separates the lines of a
  multiline reply, and every line gets the code and the enhanced code.
- "{host}" in `text` is replaced by the server's hostname (RFC 5321 4.2 puts
  the domain first in 220, 221 and 421 replies).
- The bytes of a reply are built once per hostname and cached on the constant,
  so the hot path only does a dict lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Reply", "chunk_received", "message_too_big", "queued", "queued_wire"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: three-digit code, RFC 3463 enhanced code (or ""), text."""

    code: int
    enhanced: str
    text: str
    _wire: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code must be 200..599, got {self.code}")
        if "\r" in self.text:
            raise ValueError("reply text must not contain CR; use \\n between lines")
        if self.enhanced and self.enhanced[0] != str(self.code)[0]:
            raise ValueError(f"enhanced code {self.enhanced} does not match reply class {self.code}")

    @property
    def is_error(self) -> bool:
        """True for 4xx and 5xx replies."""
        return self.code >= 400

    def to_bytes(self, hostname: str = "") -> bytes:
        """The reply on the wire, CRLF-terminated, with "{host}" replaced by `hostname`."""
        wire = self._wire.get(hostname)
        if wire is None:
            wire = self._wire[hostname] = self._encode(hostname)
        return wire

    def _encode(self, hostname: str) -> bytes:
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        text = self.text.replace("{host}", hostname)
        if "\n" not in text:
            return f"{prefix}{text}\r\n".encode()
        lines = text.split("\n")
        more = prefix.replace(" ", "-", 1)
        out = [more + line for line in lines[:-1]]
        out.append(prefix + lines[-1])
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def __str__(self) -> str:
        return self.to_bytes().decode("utf-8", "replace").rstrip("\r\n")


# --- connection ----------------------------------------------------------------------
GREETING = Reply(220, "", "{host} ESMTP ready")
EARLY_TALK = Reply(554, "5.5.1", "{host} Protocol error: you sent data before the 220 greeting; "
                   "wait for the greeting (RFC 5321 4.3.1)")
BYE = Reply(221, "2.0.0", "{host} closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "{host} Too many errors; closing connection")
IDLE_TIMEOUT = Reply(421, "4.4.2", "{host} Idle timeout; closing connection (RFC 5321 4.5.3.2)")
SHUTTING_DOWN = Reply(421, "4.3.2", "{host} Service shutting down; try again later")

# --- session commands ----------------------------------------------------------------
HELO_OK = Reply(250, "", "{host}")
OK = Reply(250, "2.0.0", "Ok")
RESET_OK = Reply(250, "2.0.0", "Ok: reset")
HELP = Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN "
             "HELP STARTTLS\nSee RFC 5321 for their syntax")
VRFY_CANNOT = Reply(252, "2.0.0", "Cannot VRFY user, but will accept the message and attempt delivery")
EXPN_DISABLED = Reply(502, "5.5.1", "EXPN is disabled on this server")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
TLS_GO = Reply(220, "2.0.0", "Ready to start TLS")
TLS_UNAVAILABLE = Reply(502, "5.5.1", "STARTTLS is not available on this server")
TLS_ACTIVE = Reply(554, "5.5.1", "TLS is already active")

# --- malformed input (RFC 5321 4.2.3, 4.5.3.1.4, 2.3.8) -----------------------------
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command not recognised; see HELP")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long: command lines are limited to 512 octets, "
                      "more for MAIL and RCPT parameters (RFC 5321 4.5.3.1.4)")
BARE_LINE_END_COMMAND = Reply(500, "5.5.2", "Bare CR or LF in command: end every line with CRLF "
                              "(RFC 5321 2.3.8)")
NUL_IN_COMMAND = Reply(500, "5.5.2", "NUL character in command: send text commands only")
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
SYNTAX_DATA = Reply(501, "5.5.4", "Syntax: DATA (no parameters)")
SYNTAX_BDAT = Reply(501, "5.5.4", "Syntax: BDAT size [LAST] (RFC 3030)")
SYNTAX_RSET = Reply(501, "5.5.4", "Syntax: RSET (no parameters)")
SYNTAX_VRFY = Reply(501, "5.5.4", "Syntax: VRFY address")
SYNTAX_EXPN = Reply(501, "5.5.4", "Syntax: EXPN name")
SYNTAX_STARTTLS = Reply(501, "5.5.4", "Syntax: STARTTLS (no parameters)")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax; use MAIL FROM:<user@domain> "
                          "(RFC 5321 4.1.2)")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax; use RCPT TO:<user@domain> "
                             "(RFC 5321 4.1.2)")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter on MAIL "
                          "(RFC 6531)")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter; see the EHLO reply")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid MAIL/RCPT parameter value or duplicate parameter")

# --- sequence (decided in state.py only) ---------------------------------------------
NEED_HELO = Reply(503, "5.5.1", "Bad sequence of commands: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Bad sequence of commands: MAIL transaction already open; "
                    "send RSET first")
NEED_MAIL = Reply(503, "5.5.1", "Bad sequence of commands: send MAIL first")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "Bad sequence of commands: no RCPT after BDAT; send RSET "
                        "to start over")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "Bad sequence of commands: DATA cannot follow BDAT in one "
                        "transaction (RFC 3030)")
BINARYMIME_NEEDS_BDAT = Reply(503, "5.5.1", "Bad sequence of commands: BODY=BINARYMIME needs BDAT, "
                              "not DATA (RFC 3030)")
TLS_IN_TRANSACTION = Reply(503, "5.5.1", "Bad sequence of commands: STARTTLS inside a MAIL "
                           "transaction; send RSET first")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")

# --- transaction ---------------------------------------------------------------------
SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients; send the rest in another "
                            "transaction (RFC 5321 4.5.3.1.8)")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the fixed maximum message size")
BARE_LINE_END_DATA = Reply(554, "5.6.0", "Message refused: bare CR or LF in the message; end "
                           "every line with CRLF (RFC 5321 2.3.8)")
MAIL_LOOP = Reply(554, "5.4.6", "Too many Received headers: mail loop detected (RFC 5321 6.3)")
SPOOL_FAILURE = Reply(452, "4.3.1", "Insufficient system storage; try again later")

# --- recipient policy (used by fastmta.policy) ---------------------------------------
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
UNKNOWN_USER = Reply(550, "5.1.1", "Recipient address rejected: no such user here")


def queued(queue_id: str) -> Reply:
    """The 250 that tells the client its message is safely stored."""
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def queued_wire(queue_id: str) -> bytes:
    """`queued(queue_id).to_bytes()`, built directly: it differs for every message."""
    return b"250 2.0.0 Ok: queued as " + queue_id.encode("ascii") + b"\r\n"


def chunk_received(size: int) -> Reply:
    """The 250 for a BDAT chunk that is not the last one (RFC 3030 section 2)."""
    return Reply(250, "2.0.0", f"Ok: {size} octets received")


def message_too_big(limit: int) -> Reply:
    """552 naming the limit, for SIZE at MAIL and for oversized data (RFC 1870 section 6)."""
    return Reply(552, "5.3.4", f"Message size exceeds the fixed maximum message size of {limit} "
                 "bytes")
