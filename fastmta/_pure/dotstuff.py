"""Streaming dot-stuffer for the sending side (pure-Python twin of fastmta._ext.dotstuff).

Message content goes in, in chunks of any size; its SMTP wire form comes out
(RFC 5321 4.5.2): every line end becomes CRLF, every line that starts with "."
gets a second one, and `finish()` closes the data with ".CRLF".

Invariants:
- CRLF, a lone LF and a lone CR each count as one line end and are sent as CRLF
  (RFC 5321 2.3.8: a bare CR or LF must not go on the wire).
- A CR that ends a chunk is held back until the next byte shows whether it
  starts a CRLF; nothing else is held between feeds.
- `finish()` adds a CRLF first when the content did not end with a line end, so
  the end marker is always CRLF "." CRLF.  An empty message is sent as ".CRLF".
- Feeding the output to a DataReader gives back the content with its line ends
  normalised to CRLF.
"""

from __future__ import annotations

__all__ = ["DotStuffer", "dot_stuff"]


class DotStuffer:
    """Turn message content into the wire form of DATA, chunk by chunk."""

    __slots__ = ("_at_line_start", "_finished", "_held_cr")

    def __init__(self) -> None:
        self._at_line_start = True  # the next byte starts a line
        self._held_cr = False  # the last byte fed was a CR not yet emitted
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Consume content bytes; return their wire form (possibly empty)."""
        if self._finished:
            raise ValueError(
                "DotStuffer.feed() after finish(); create a new DotStuffer per message"
            )
        if type(data) is not bytes:
            data = memoryview(data).tobytes()  # any bytes-like object; str and int raise TypeError
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        if not data:
            return b""
        if b"\r" in data or b"\n" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            data = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[0] == 0x2E:  # "."
            data = b"." + data
        self._at_line_start = data[-1] == 0x0A
        return data

    def finish(self) -> bytes:
        """Return the bytes that close the data: a CRLF if needed, then ".CRLF"."""
        if self._finished:
            raise ValueError(
                "DotStuffer.finish() called twice; create a new DotStuffer per message"
            )
        self._finished = True
        if self._held_cr or not self._at_line_start:
            self._held_cr = False
            return b"\r\n.\r\n"
        return b".\r\n"


def dot_stuff(data: bytes) -> bytes:
    """Return the complete wire form of one message, ending with ".CRLF"."""
    stuffer = DotStuffer()
    return stuffer.feed(data) + stuffer.finish()
