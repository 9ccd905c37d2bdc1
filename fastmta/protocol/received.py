"""The Received header we add (RFC 5321 4.4) and the count of those already present.

`format_received` builds our trace header from values the caller passes; the
protocol knows no clock, so the date text comes from the transport.
`ReceivedCounter` counts "Received:" fields in the header section of a message
that arrives in pieces, for mail-loop detection (RFC 5321 6.3).

Invariants:
- The header is folded onto continuation lines (RFC 5322 2.2.3), CRLF-ended,
  and client-supplied text in it (HELO name, reverse name) is reduced to
  printable ASCII without parentheses or backslashes, so it cannot close the
  comment early or smuggle a field of its own.
- `ReceivedCounter` holds at most 10 bytes between pieces, whatever the header
  section's size, and does its scanning with bytes methods (no per-line
  Python work); it stops at the first empty line.
"""

from __future__ import annotations

__all__ = ["ReceivedCounter", "format_received"]

_UNSAFE = str.maketrans({"(": "?", ")": "?", "\\": "?", ";": "?"})


def _clean(text: str) -> str:
    """Printable ASCII only; anything else (and comment/stamp delimiters) becomes "?"."""
    if not (text.isascii() and text.isprintable()):
        text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return text.translate(_UNSAFE).replace(" ", "?")


def format_received(
    helo: str | None,
    client_ip: str,
    client_host: str | None,
    by_host: str,
    protocol_name: str,
    queue_id: str,
    recipient: str | None,
    date_text: str,
) -> bytes:
    """The Received header field for one accepted message, CRLF-terminated.

    `recipient` is given only when the message has exactly one, as most MTAs
    do (naming all recipients would disclose Bcc); `date_text` is an RFC 5322
    date-time, e.g. from `email.utils.format_datetime`.
    """
    literal = f"[IPv6:{client_ip}]" if ":" in client_ip else f"[{client_ip}]"
    tcp_info = f"{_clean(client_host)} {literal}" if client_host else literal
    lines = [
        f"Received: from {_clean(helo) if helo else 'unknown'} ({tcp_info})",
        f"\tby {by_host} with {protocol_name} id {queue_id}",
    ]
    if recipient is not None:
        lines.append(f"\tfor <{recipient}>; {date_text}")
    else:
        lines[-1] += f"; {date_text}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


_FIELD = b"\nreceived:"
_CARRY = len(_FIELD) - 1  # enough to find a field name split across two pieces


class ReceivedCounter:
    """Counts Received header fields in message content fed piece by piece."""

    __slots__ = ("_carry", "count", "done")

    def __init__(self) -> None:
        self.count = 0
        self.done = False  # the header section has ended
        self._carry = b"\n"  # the message starts at a line start

    def reset(self) -> None:
        self.count = 0
        self.done = False
        self._carry = b"\n"

    def feed(self, content: bytes) -> int:
        """Scan the next piece of content; return the count so far."""
        if self.done:
            return self.count
        data = self._carry + content
        # The header section ends at the first empty line (RFC 5322 2.1); a bare
        # "\n\n" ends it too, so LF-only content cannot hide fields from us.
        end = data.find(b"\n\r\n")
        bare_end = data.find(b"\n\n", 0, end if end >= 0 else len(data))
        if bare_end >= 0:
            end = bare_end
        if end >= 0:
            head = data[: end + 1]
            self.done = True
        else:
            head = data
            self._carry = data[-_CARRY:]
        # A field name split across pieces is found once: the carry is one byte
        # shorter than the pattern, so a match can never lie entirely inside it.
        self.count += head.lower().count(_FIELD)
        return self.count
