"""Streaming base64 (RFC 2045 6.8); the pure-Python twin is fastmta._pure.b64.

Encoding: lines of `line_length` characters (76, the RFC maximum, by default),
each followed by CRLF, the last shorter one too; `line_length=0` gives one
unbroken line without CRLF (SMTP AUTH, RFC 4954 4).  Empty input encodes to b"".

Decoding ignores CR, LF, SP and TAB anywhere.
- strict=True: any other byte outside the alphabet, "=" where a data character
  is due, anything but whitespace after the padding, and a stream that ends
  inside a quantum or inside the padding raise `Base64DecodeError`.
- strict=False: bytes outside the alphabet and stray "=" are skipped; the first
  "=" that completes a quantum ends the data and the rest is ignored (RFC 2045
  6.8, as binascii does); a final partial quantum gives the bytes it holds.

Output never depends on how the input is split into `feed()` calls.  `feed()`
accepts any object with the buffer protocol.  Calling `feed()` or `finish()`
after `finish()` raises ValueError.  Decoding state after a Base64DecodeError
is undefined: drop the decoder.
"""

from typing_extensions import Buffer

__all__ = ["Base64DecodeError", "Base64Decoder", "Base64Encoder", "b64_decode", "b64_encode"]

class Base64DecodeError(ValueError):
    """Raised by strict decoding; the same class in both backends."""

    offset: int  # offset of the offending byte in the whole stream (its length if it ended early)
    reason: str
    def __init__(self, offset: int, reason: str) -> None: ...

class Base64Encoder:
    line_length: int
    def __init__(self, line_length: int = 76) -> None:
        """ValueError unless `line_length` is 0 or a positive multiple of 4."""
    def feed(self, data: Buffer) -> bytes:
        """Encode `data`; return the base64 text completed so far (whole 4-character groups)."""
    def finish(self) -> bytes:
        """Encode the last 1-2 bytes with padding and end the last line with CRLF."""

class Base64Decoder:
    strict: bool
    def __init__(self, strict: bool = True) -> None: ...
    def feed(self, data: Buffer) -> bytes:
        """Decode `data`; return the bytes completed so far."""
    def finish(self) -> bytes:
        """End the stream: lenient mode returns the bytes of a final partial quantum."""

def b64_encode(data: Buffer, line_length: int = 76) -> bytes:
    """One-shot `Base64Encoder`."""

def b64_decode(data: Buffer, strict: bool = True) -> bytes:
    """One-shot `Base64Decoder`."""
