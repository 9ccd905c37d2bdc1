"""Streaming quoted-printable (RFC 2045 6.7); the pure-Python twin is fastmta._pure.qp.

Encoder:
- Bytes 33-60 and 62-126 are literal; "=" and all other bytes are "=XX" with
  upper-case hex (rule 1).  SP/TAB are literal except the last one before a
  hard line break or the end of the data, which is encoded (rule 3).
- Text mode (binary=False) keeps CRLF as a hard line break (rule 4) and
  encodes a lone CR or LF (=0D, =0A), so decoding returns the exact input.
  Binary mode encodes every CR and LF; its only line breaks are soft ones.
- Soft breaks ("=" CRLF, rule 5) keep each encoded line, "=" included, within
  76 characters, never split an "=XX", and are written only when more follows.

Decoder:
- A line ends at LF (CRLF or lone LF, each kept as it came).  Trailing SP/TAB
  on a line are dropped (rule 3); a line that then ends in "=" joins the next
  (soft break), and a final "=" at the end of the data is dropped.
- "=XX" with upper- or lower-case hex gives the byte; any other "=" stays
  literal and decoding resumes right after it (RFC 2045 6.7 note 2).  8-bit
  bytes and everything else pass through.  Nothing raises on bad input.

Output never depends on how the input is split into `feed()` calls; `feed()`
accepts any buffer.  Calling `feed()` or `finish()` after `finish()` raises
ValueError.
"""

from typing_extensions import Buffer

__all__ = ["QPDecoder", "QPEncoder", "qp_decode", "qp_encode"]

class QPEncoder:
    binary: bool
    def __init__(self, binary: bool = False) -> None: ...
    def feed(self, data: Buffer) -> bytes:
        """Encode `data`; a final SP/TAB (and, in text mode, a final CR) is held for the next call."""
    def finish(self) -> bytes:
        """Encode what is held: a final SP/TAB as =20/=09, a final CR as =0D."""

class QPDecoder:
    def __init__(self) -> None: ...
    def feed(self, data: Buffer) -> bytes:
        """Decode `data`; the undecided end of the current line is held for the next call."""
    def finish(self) -> bytes:
        """Decode the held end of the last line as the end of the data."""

def qp_encode(data: Buffer, binary: bool = False) -> bytes:
    """One-shot `QPEncoder`."""

def qp_decode(data: Buffer) -> bytes:
    """One-shot `QPDecoder`."""
