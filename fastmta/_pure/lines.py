"""Incremental SMTP command-line splitter (pure-Python twin of fastmta._ext.lines).

`feed()` appends received bytes; `next_line()` returns the next complete line
(without its line end) and a set of flags, or None when only a partial line is
buffered.  The caller may stop taking lines at any point (DATA, BDAT, STARTTLS)
and `take_rest()` hands back everything not yet consumed.

Invariants:
- A line is terminated by LF.  CRLF is the proper end; a lone LF ends the line too
  but sets LINE_BARE_LF.  A CR not followed by LF sets LINE_BARE_CR.
- `limit` counts the whole line including its CRLF (RFC 5321 4.5.3.1.4: 512 for
  commands).  A longer line is returned once, truncated to `limit` bytes, with
  LINE_TOO_LONG, when its LF arrives (so a reply to it stays in order with the
  lines around it); its remaining bytes are dropped as they arrive, so memory per
  splitter is bounded by `limit` plus what one `feed()` brings.
- Work is linear in the input: no byte is scanned twice for a line end.
"""

from __future__ import annotations

__all__ = [
    "LINE_BARE_CR",
    "LINE_BARE_LF",
    "LINE_NUL",
    "LINE_OK",
    "LINE_TOO_LONG",
    "LineSplitter",
]

LINE_OK = 0
LINE_TOO_LONG = 1
LINE_BARE_LF = 2
LINE_BARE_CR = 4
LINE_NUL = 8


class LineSplitter:
    """Split a byte stream into CRLF-terminated lines of at most `limit` octets."""

    __slots__ = ("_buf", "_discarding", "_head", "_pos", "_scanned", "limit")

    def __init__(self, limit: int = 512) -> None:
        if limit < 2:
            raise ValueError("limit must be at least 2 (room for CRLF)")
        self.limit = limit
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte
        self._scanned = 0  # bytes after _pos already known to hold no LF
        self._discarding = False  # inside an over-long line whose bytes are dropped
        self._head = b""  # first `limit` bytes of the over-long line

    @property
    def buffered(self) -> int:
        """Number of received bytes not yet returned as lines."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_line(self) -> tuple[bytes, int] | None:
        """Return (line without its line end, flags) or None if no full line is buffered."""
        buf = self._buf
        pos = self._pos
        if self._discarding:
            newline = buf.find(b"\n", pos)
            if newline < 0:
                del buf[:]
                self._pos = 0
                return None
            self._discarding = False
            self._pos = newline + 1
            head, self._head = self._head, b""
            return head, LINE_TOO_LONG
        limit = self.limit
        newline = buf.find(b"\n", pos + self._scanned, pos + limit)
        if newline < 0:
            available = len(buf) - pos
            if available < limit:
                self._scanned = available
                return None
            # No line end within `limit` octets: the line is too long.
            self._scanned = 0
            self._head = bytes(buf[pos : pos + limit])
            self._discarding = True
            del buf[: pos + limit]
            self._pos = 0
            return self.next_line()
        self._scanned = 0
        self._pos = newline + 1
        flags = LINE_OK
        if newline > pos and buf[newline - 1] == 13:
            line = bytes(buf[pos : newline - 1])
        else:
            line = bytes(buf[pos:newline])
            flags |= LINE_BARE_LF
        if 13 in line:
            flags |= LINE_BARE_CR
        if 0 in line:
            flags |= LINE_NUL
        return line, flags

    def take_rest(self) -> bytes:
        """Remove and return every buffered byte not yet returned as a line."""
        if self._discarding:
            self._discarding = False
            self._head = b""
        rest = bytes(self._buf[self._pos :])
        del self._buf[:]
        self._pos = 0
        self._scanned = 0
        return rest
