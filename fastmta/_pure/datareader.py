"""Incremental DATA reader (pure-Python twin of fastmta._ext.datareader).

Feeds of the raw bytes that follow a 354 reply come in; the message content comes
out, dot-unstuffed (RFC 5321 4.5.2), in as few and as large pieces as the input
allows.  The reader stops at the end-of-data marker and keeps what follows it
(pipelined commands) for `take_rest()`.

Invariants:
- Only CR LF "." CR LF ends the data.  LF.LF, CR.CR, LF.CRLF and CRLF.LF never do
  (SMTP smuggling); they are content, and counted as bare LF / bare CR.
- The content returned ends with the CRLF of its last line; the terminating
  ".CRLF" is not part of it.  Data that is only ".CRLF" is an empty message.
- A leading dot is removed only after a real CRLF (or at the very start).
- At most 4 bytes (a possible start of the end marker) are held between feeds.
- `size` counts content octets returned; `long_lines` counts wire lines longer
  than `max_line` octets including their line end (RFC 5321 4.5.3.1.6: 1000);
  `bare_lf` / `bare_cr` count lone line-end bytes.
- With `normalise=True`, lone LF and lone CR are rewritten to CRLF in the output
  (they still never end the data and never start a dot-stuffed line).
"""

from __future__ import annotations

__all__ = ["DataReader"]

_MARKER = b"\r\n.\r\n"
_PARTIAL_MARKERS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")


class DataReader:
    """Turn the wire form of DATA into message content, chunk by chunk."""

    __slots__ = (
        "_line_len",
        "_rest",
        "_skip",
        "_tail",
        "bare_cr",
        "bare_lf",
        "done",
        "long_lines",
        "max_line",
        "normalise",
        "size",
    )

    def __init__(self, max_line: int = 1000, normalise: bool = False) -> None:
        if max_line < 2:
            raise ValueError("max_line must be at least 2 (room for CRLF)")
        self.max_line = max_line
        self.normalise = normalise
        self.done = False
        self.size = 0
        self.long_lines = 0
        self.bare_lf = 0
        self.bare_cr = 0
        # The message starts at a line start: pretend a CRLF came before it and
        # drop those two bytes from the output.
        self._tail = b"\r\n"
        self._skip = 2
        self._line_len = -2  # the pretend CRLF is not part of any line
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        """Consume `data`; return the content it completes (possibly empty)."""
        if self.done:
            raise ValueError(
                "DataReader.feed() after the end of data; pass take_rest() to the command "
                "parser and start a new DataReader for the next message"
            )
        buf = self._tail + data
        end = buf.find(_MARKER)
        if end >= 0:
            segment = buf[: end + 2]
            self._rest = buf[end + 5 :]
            self._tail = b""
            self.done = True
        else:
            hold = 0
            for partial in _PARTIAL_MARKERS:
                if buf.endswith(partial):
                    hold = len(partial)
                    break
            segment = buf[: len(buf) - hold]
            self._tail = buf[len(buf) - hold :]
        return self._emit(segment)

    def take_rest(self) -> bytes:
        """Return the bytes received after the end-of-data marker (once)."""
        rest, self._rest = self._rest, b""
        return rest

    def _emit(self, segment: bytes) -> bytes:
        if not segment:
            return b""
        self._count_lines(segment)
        crlf = segment.count(b"\r\n")
        bare_lf = segment.count(b"\n") - crlf
        bare_cr = segment.count(b"\r") - crlf
        self.bare_lf += bare_lf
        self.bare_cr += bare_cr
        out = segment.replace(b"\r\n.", b"\r\n")
        if self._skip:
            skipped = min(self._skip, len(out))
            out = out[skipped:]
            self._skip -= skipped
        if self.normalise and (bare_lf or bare_cr):
            out = out.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        self.size += len(out)
        return out

    def _count_lines(self, segment: bytes) -> None:
        max_line = self.max_line
        line_len = self._line_len
        if line_len + len(segment) <= max_line:
            newline = segment.rfind(b"\n")
            self._line_len = line_len + len(segment) if newline < 0 else len(segment) - newline - 1
            return
        start = 0
        while True:
            newline = segment.find(b"\n", start)
            if newline < 0:
                line_len += len(segment) - start
                break
            line_len += newline - start + 1
            if line_len > max_line:
                self.long_lines += 1
            line_len = 0
            start = newline + 1
        self._line_len = line_len  # a line still open is counted when its LF arrives
