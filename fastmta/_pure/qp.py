"""Streaming quoted-printable (RFC 2045 6.7), pure-Python twin of fastmta._ext.qp.

Encoding (`QPEncoder`, `qp_encode`):
- Bytes 33-60 and 62-126 stay literal; "=" and every other byte become "=XX"
  (upper-case hex, rule 1).  SP and TAB stay literal except the last one before
  a hard line break or the end of the data, which is encoded (rule 3).
- Text mode (`binary=False`): CRLF is a hard line break and stays CRLF (rule 4);
  a lone CR or LF is encoded (=0D, =0A), so decoding gives back the exact bytes.
  Binary mode: CR and LF are always encoded; the only line breaks are soft.
- Soft line breaks ("=" CRLF, rule 5) keep every encoded line, "=" included, at
  most 76 characters; an "=XX" escape is never split.  The break is written only
  when another character follows, so a line of exactly 75 characters before a
  hard break or the end of the data carries no soft break.
- Output does not depend on how the input is split into `feed()` calls.

Decoding (`QPDecoder`, `qp_decode`): a line ends at LF (CRLF or a lone LF, each
kept as it came).  Trailing SP/TAB on a line are dropped (rule 3: transport may
have added them); a line that then ends in "=" is joined to the next (soft
break), also at the end of the data.  "=XX" with upper- or lower-case hex gives
the byte; any other "=" is kept literally and decoding resumes right after it
(the robust reading suggested by RFC 2045 6.7 note 2).  Everything else passes
through unchanged, 8-bit bytes included.  Output does not depend on chunking.
"""

from __future__ import annotations

import binascii
import re

__all__ = ["QPDecoder", "QPEncoder", "qp_decode", "qp_encode"]

MAX_LINE = 76  # RFC 2045 6.7 rule 5: encoded lines are at most 76 characters
_CONTENT_MAX = MAX_LINE - 1  # room left on a line before a soft break's "="

_UNSAFE_RUN = re.compile(rb"[^\x21-\x3c\x3e-\x7e \t]+")
_WS_ESCAPE = {0x20: b"=20", 0x09: b"=09"}
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
# What a2b_qp reads differently from RFC 2045 6.7 as we do: a malformed "=", or
# whitespace before a line end (rule 3).
_MALFORMED_EQUALS = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n)")
_TRAILING_WHITESPACE = (b" \r\n", b"\t\r\n", b" \n", b"\t\n")


def _escape_run(match: re.Match[bytes]) -> bytes:
    return b"=" + binascii.hexlify(match[0], b"=").upper()


def _escape(content: bytes) -> bytes:
    """Encode bytes in the middle of a line (SP/TAB stay literal)."""
    return _UNSAFE_RUN.sub(_escape_run, content)


class QPEncoder:
    """Encode a byte stream as quoted-printable, text or binary mode."""

    __slots__ = ("_column", "_finished", "_held", "binary")

    def __init__(self, binary: bool = False) -> None:
        self.binary = binary
        self._held = b""  # a trailing SP/TAB and/or CR whose fate depends on the next byte
        self._column = 0
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Encode `data`; return the encoded text completed so far."""
        if self._finished:
            raise ValueError("QPEncoder.feed() after finish(); create a new encoder")
        data = self._held + bytes(data)
        hold = 0
        if data.endswith(b"\r") and not self.binary:
            hold = 1
        if len(data) > hold and data[len(data) - hold - 1] in (0x20, 0x09):
            hold += 1
        self._held = data[len(data) - hold :]
        return self._encode(data[: len(data) - hold])

    def finish(self) -> bytes:
        """Encode what is held back (a final SP/TAB is encoded, a final CR is =0D)."""
        if self._finished:
            raise ValueError("QPEncoder.finish() called twice; create a new encoder")
        self._finished = True
        held, self._held = self._held, b""
        if held.endswith((b" ", b"\t")):
            return self._place(_escape(held[:-1]) + _WS_ESCAPE[held[-1]])
        return self._place(_escape(held))

    def _encode(self, body: bytes) -> bytes:
        if self.binary:
            return self._place(_escape(body))
        lines = body.split(b"\r\n")
        pieces = []
        for line in lines[:-1]:
            if line.endswith((b" ", b"\t")):
                encoded = _escape(line[:-1]) + _WS_ESCAPE[line[-1]]
            else:
                encoded = _escape(line)
            pieces.append(self._place(encoded))
            pieces.append(b"\r\n")
            self._column = 0
        pieces.append(self._place(_escape(lines[-1])))
        return b"".join(pieces)

    def _place(self, encoded: bytes) -> bytes:
        """Lay encoded text onto lines from the current column, adding soft breaks."""
        column = self._column
        if column + len(encoded) <= _CONTENT_MAX:
            self._column = column + len(encoded)
            return encoded
        pieces = []
        position = 0
        room = _CONTENT_MAX - column
        while len(encoded) - position > room:
            cut = position + room
            # Never split an "=XX" escape: its "=" may sit one or two places before the cut.
            if cut - 1 >= position and encoded[cut - 1] == 0x3D:
                cut -= 1
            elif cut - 2 >= position and encoded[cut - 2] == 0x3D:
                cut -= 2
            pieces.append(encoded[position:cut])
            pieces.append(b"=\r\n")
            position = cut
            room = _CONTENT_MAX
        pieces.append(encoded[position:])
        self._column = _CONTENT_MAX - room + len(encoded) - position
        return b"".join(pieces)


def _unescape(content: bytes, line_end: bool) -> bytes:
    """Decode "=XX" escapes; a malformed "=" stays literal.

    With `line_end`, `content` is a whole line already stripped of trailing
    whitespace, and a final "=" is a soft break (dropped).  Without it, `content`
    stops mid-line before more bytes that start with "=" (see _undecided_start),
    so a final "=" or "=X" there is malformed and literal.
    """
    if b"=" not in content:
        return content
    parts = content.split(b"=")
    out = [parts[0]]
    last = len(parts) - 1
    for index in range(1, len(parts)):
        part = parts[index]
        if len(part) >= 2 and part[0] in _HEX_DIGITS and part[1] in _HEX_DIGITS:
            out.append(binascii.unhexlify(part[:2]))
            out.append(part[2:])
        elif index == last and line_end and not part:
            pass  # soft line break
        else:
            out.append(b"=")
            out.append(part)
    return b"".join(out)


def _decode_line(line: bytes, line_end: bytes) -> bytes:
    """Decode one whole line given without its line end."""
    content = line.rstrip(b" \t")
    decoded = _unescape(content, line_end=True)
    # A final "=" can never be a hex digit of an escape, so it is always a soft break.
    return decoded if content.endswith(b"=") else decoded + line_end


def _undecided_start(tail: bytes) -> int:
    """Where the undecided end of a partial line starts.

    Undecided are: trailing SP/TAB (trailing whitespace or not?), a final CR
    (line end or content?), and an "=" followed only by whitespace, or by one
    hex digit (soft break, escape, or literal?).
    """
    end = len(tail)
    if end and tail[end - 1] == 0x0D:
        end -= 1
    start = len(tail[:end].rstrip(b" \t"))
    if start >= 1 and tail[start - 1] == 0x3D:
        return start - 1
    if start == end and start >= 2 and tail[start - 2] == 0x3D and tail[start - 1] in _HEX_DIGITS:
        return start - 2
    return start


class QPDecoder:
    """Decode quoted-printable fed in arbitrary chunks."""

    __slots__ = ("_finished", "_held")

    def __init__(self) -> None:
        self._held = bytearray()  # the undecided end of the current line
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Decode `data`; return the bytes completed so far."""
        if self._finished:
            raise ValueError("QPDecoder.feed() after finish(); create a new decoder")
        data = bytes(data)
        held = self._held
        if (
            held
            and not data.strip(b" \t")
            and not held.endswith(b"\r")
            and not (len(held) >= 2 and held[0] == 0x3D and held[1] in _HEX_DIGITS)
        ):
            held += data  # only more whitespace: still undecided, and no rescan
            return b""
        buffer = bytes(held) + data
        out = []
        last_lf = buffer.rfind(b"\n")
        if last_lf >= 0:
            out.append(_decode_lines(buffer[: last_lf + 1]))
        tail = buffer[last_lf + 1 :]
        cut = _undecided_start(tail)
        out.append(_unescape(tail[:cut], line_end=False))
        self._held = bytearray(tail[cut:])
        return b"".join(out)

    def finish(self) -> bytes:
        """Decode the held end of the last line as the end of the data."""
        if self._finished:
            raise ValueError("QPDecoder.finish() called twice; create a new decoder")
        self._finished = True
        held = bytes(self._held)
        self._held = bytearray()
        return _decode_line(held, b"") if held else b""


def _a2b_qp_agrees(block: bytes) -> bool:
    """True when binascii.a2b_qp reads these whole lines as we do.

    It does when every "=" starts an escape or a soft break and no line ends
    in whitespace: a2b_qp keeps trailing whitespace and reads a malformed "="
    its own way.
    """
    if any(end in block for end in _TRAILING_WHITESPACE):
        return False
    return _MALFORMED_EQUALS.search(block) is None


def _decode_lines(block: bytes) -> bytes:
    """Decode complete lines (`block` ends with LF)."""
    if _a2b_qp_agrees(block):
        return binascii.a2b_qp(block)  # same result, much faster
    lines = block.split(b"\n")
    lines.pop()  # empty string after the final LF
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            out.append(_decode_line(line[:-1], b"\r\n"))
        else:
            out.append(_decode_line(line, b"\n"))
    return b"".join(out)


def qp_encode(data: bytes, binary: bool = False) -> bytes:
    """Encode `data` in one go; see `QPEncoder`."""
    encoder = QPEncoder(binary)
    return encoder.feed(data) + encoder.finish()


def qp_decode(data: bytes) -> bytes:
    """Decode `data` in one go; see `QPDecoder`."""
    decoder = QPDecoder()
    return decoder.feed(data) + decoder.finish()
