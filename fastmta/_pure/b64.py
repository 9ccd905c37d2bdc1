"""Streaming base64 (RFC 2045 6.8), pure-Python twin of fastmta._ext.b64.

Encoding: `Base64Encoder` turns a byte stream into lines of `line_length`
characters (76 by default, the RFC 2045 6.8 maximum), each followed by CRLF;
the last, shorter line also ends in CRLF.  `line_length=0` means one unbroken
line without CRLF (what SMTP AUTH wants, RFC 4954 4).  The output does not
depend on how the input is split into `feed()` calls.

Decoding: `Base64Decoder` ignores CR, LF, SP and TAB anywhere.  With
`strict=True` any other byte outside the alphabet, "=" where a data character is
due, data after the padding, or a missing padding raises `Base64DecodeError`
(a ValueError) carrying the offset of the offending byte in the whole stream.
With `strict=False` bytes outside the alphabet and stray "=" are skipped, the
first "=" that completes a quantum ends the data (RFC 2045 6.8: "=" marks the
end; like binascii, what follows is ignored), and a final partial quantum is
decoded as far as it goes.

Invariants: the same names, results and exceptions as the compiled kernel;
`Base64DecodeError` is the one class both backends raise.
"""

from __future__ import annotations

import binascii
import re

__all__ = [
    "Base64DecodeError",
    "Base64Decoder",
    "Base64Encoder",
    "b64_decode",
    "b64_encode",
]

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_WHITESPACE = b" \t\r\n"
# Everything that is neither alphabet nor "=": dropped in lenient mode.
_NOT_DATA = bytes(b for b in range(256) if b not in _ALPHABET and b != ord("="))
_STRICT_INVALID = re.compile(rb"[^A-Za-z0-9+/= \t\r\n]")
_NON_WHITESPACE = re.compile(rb"[^ \t\r\n]")


class Base64DecodeError(ValueError):
    """Base64 input rejected by strict decoding; `offset` is the stream offset of the problem."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(
            f"invalid base64 at offset {offset}: {reason}; fix the sender's encoding, "
            "or decode with strict=False to skip stray bytes"
        )
        self.offset = offset
        self.reason = reason


def _check_line_length(line_length: int) -> None:
    if line_length < 0 or line_length % 4:
        raise ValueError(
            f"line_length={line_length}: use a positive multiple of 4 "
            "(76 for MIME, RFC 2045 6.8) or 0 for one unbroken line"
        )


class Base64Encoder:
    """Encode a byte stream as base64 lines of `line_length` characters ending in CRLF."""

    __slots__ = ("_carry", "_column", "_finished", "line_length")

    def __init__(self, line_length: int = 76) -> None:
        _check_line_length(line_length)
        self.line_length = line_length
        self._carry = b""  # 0-2 input bytes not yet forming a full 3-byte group
        self._column = 0  # characters already on the current output line
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Encode `data`; return the base64 text completed so far."""
        if self._finished:
            raise ValueError("Base64Encoder.feed() after finish(); create a new encoder")
        data = self._carry + bytes(data)
        whole = len(data) - len(data) % 3
        self._carry = data[whole:]
        if not whole:
            return b""
        return self._wrap(binascii.b2a_base64(data[:whole], newline=False))

    def finish(self) -> bytes:
        """Encode what is left, with padding, and end the last line."""
        if self._finished:
            raise ValueError("Base64Encoder.finish() called twice; create a new encoder")
        self._finished = True
        out = self._wrap(binascii.b2a_base64(self._carry, newline=False)) if self._carry else b""
        if self._column and self.line_length:
            out += b"\r\n"
        self._column = 0
        return out

    def _wrap(self, text: bytes) -> bytes:
        width = self.line_length
        if not width:
            return text
        pieces = []
        position = 0
        room = width - self._column
        while len(text) - position >= room:
            pieces.append(text[position : position + room])
            pieces.append(b"\r\n")
            position += room
            room = width
        rest = text[position:]
        pieces.append(rest)
        self._column = width - room + len(rest)
        return b"".join(pieces)


# Decoder states.
_DATA = 0
_NEED_PAD = 1  # strict only: "=" seen after two data characters, a second "=" is due
_ENDED = 2


class Base64Decoder:
    """Decode base64 fed in arbitrary chunks; see the module docstring for strictness."""

    __slots__ = ("_finished", "_offset", "_pending", "_state", "strict")

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self._pending = b""  # 0-3 alphabet characters of an incomplete quantum
        self._state = _DATA
        self._offset = 0  # stream offset of the first byte of the next feed
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Decode `data`; return the bytes completed so far."""
        if self._finished:
            raise ValueError("Base64Decoder.feed() after finish(); create a new decoder")
        data = bytes(data)
        base = self._offset
        self._offset += len(data)
        strict = self.strict
        limit = len(data)
        invalid = -1
        if strict:
            match = _STRICT_INVALID.search(data)
            if match:
                invalid = limit = match.start()
        out: list[bytes] = []
        position = 0
        while position < limit:
            if self._state == _ENDED:
                self._after_end(data, position, limit, base)
                break
            if self._state == _NEED_PAD:
                match = _NON_WHITESPACE.search(data, position, limit)
                if match is None:
                    break
                at = match.start()
                if data[at] != ord("="):
                    raise Base64DecodeError(base + at, "expected a second '=' to end the padding")
                self._state = _ENDED
                position = at + 1
                continue
            pad = data.find(b"=", position, limit)
            run_end = limit if pad < 0 else pad
            if run_end > position:
                out.append(self._decode_run(data[position:run_end]))
            if pad < 0:
                break
            out.append(self._pad(base + pad))
            position = pad + 1
        if invalid >= 0:
            raise Base64DecodeError(
                base + invalid, f"byte 0x{data[invalid]:02x} is not in the base64 alphabet"
            )
        return b"".join(out)

    def finish(self) -> bytes:
        """End the stream; return the last bytes (lenient) or raise if it was cut short (strict)."""
        if self._finished:
            raise ValueError("Base64Decoder.finish() called twice; create a new decoder")
        self._finished = True
        pending, self._pending = self._pending, b""
        if self._state == _NEED_PAD:
            raise Base64DecodeError(self._offset, "input ends inside the padding (one '=' missing)")
        if self._state == _ENDED or not pending:
            return b""
        if self.strict:
            raise Base64DecodeError(
                self._offset,
                f"input ends with {len(pending)} characters of an incomplete quantum "
                "(padding missing)",
            )
        if len(pending) == 1:
            return b""  # six bits cannot make a byte
        return binascii.a2b_base64(pending + b"=" * (4 - len(pending)))

    def _decode_run(self, run: bytes) -> bytes:
        # A run holds no "="; in strict mode it holds only alphabet and whitespace.
        chars = self._pending + run.translate(None, _NOT_DATA)
        whole = len(chars) - len(chars) % 4
        self._pending = chars[whole:]
        return binascii.a2b_base64(chars[:whole]) if whole else b""

    def _pad(self, offset: int) -> bytes:
        count = len(self._pending)
        if count < 2:
            if self.strict:
                raise Base64DecodeError(offset, "'=' where a data character is expected")
            return b""  # lenient: a stray "=" is skipped
        quantum, self._pending = self._pending, b""
        if count == 2:
            self._state = _NEED_PAD if self.strict else _ENDED
            return binascii.a2b_base64(quantum + b"==")
        self._state = _ENDED
        return binascii.a2b_base64(quantum + b"=")

    def _after_end(self, data: bytes, position: int, limit: int, base: int) -> None:
        if not self.strict:
            return
        match = _NON_WHITESPACE.search(data, position, limit)
        if match is not None:
            raise Base64DecodeError(base + match.start(), "data after the end of the padding")


def b64_encode(data: bytes, line_length: int = 76) -> bytes:
    """Encode `data` in one go: lines of `line_length` characters, each ending in CRLF."""
    encoder = Base64Encoder(line_length)
    return encoder.feed(data) + encoder.finish()


def b64_decode(data: bytes, strict: bool = True) -> bytes:
    """Decode `data` in one go; see `Base64Decoder` for `strict`."""
    decoder = Base64Decoder(strict)
    return decoder.feed(data) + decoder.finish()
