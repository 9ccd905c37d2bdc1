"""RFC 2047 encoded words; the pure-Python twin is fastmta._pure.rfc2047.

decode_words(value) -> DecodedHeader(text, problems)
- Folding (CRLF or LF before SP/TAB) is removed first (RFC 5322 2.2.3).
- `=?charset?B|Q?text?=` is recognised anywhere, as email.header does; the
  charset may carry an RFC 2231 `*lang` suffix (ignored); text has no CR/LF
  and ends at the first "?=".  Q: "_" is SP, "=XX" a byte (either case), a
  malformed "=" stays.  B: missing padding is supplied, junk skipped.
- Whitespace between two decoded words is dropped (RFC 2047 6.2); adjacent
  words in one charset are joined as bytes before decoding.
- Never raises on bad input.  Each problem is a sentence in `problems`:
  an unknown charset, or a codec that is not a text encoding ("zlib",
  "base64", ...), keeps the word exactly as it appeared; bytes invalid in the
  charset, malformed base64, and (for a `bytes` value) 8-bit bytes that are
  not UTF-8 (RFC 6532) become U+FFFD.  A `str` value's plain text comes back
  unchanged.

encode_words(text, charset="utf-8", offset=0) -> str
- Encoded words of at most 75 characters (RFC 2047 2), joined by CRLF SP, so
  each line holds at most 76; the first word also fits after `offset`
  characters already on its line, or the result starts with CRLF SP.
- Q or B, whichever is shorter for the whole text (Q on a tie); Q uses only
  the characters allowed in a phrase (RFC 2047 5 (3)).  A word never ends
  inside a character.  "" encodes to "".
- charset "unknown-8bit" (RFC 1428) carries U+0000-U+00FF as raw bytes.
- UnicodeEncodeError if `text` cannot be written in `charset`; ValueError if
  `charset` is not a MIME charset token, not a text codec Python knows, or too
  long to leave room for one character.
"""

from typing import NamedTuple

__all__ = ["DecodedHeader", "decode_words", "encode_words"]

class DecodedHeader(NamedTuple):
    """The same class in both backends."""

    text: str
    problems: tuple[str, ...]

def decode_words(value: str | bytes) -> DecodedHeader: ...
def encode_words(text: str, charset: str = "utf-8", offset: int = 0) -> str: ...
