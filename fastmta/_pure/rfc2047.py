"""RFC 2047 encoded words, pure-Python twin of fastmta._ext.rfc2047.

`decode_words(value)` turns a header value that mixes plain text and
`=?charset?B|Q?text?=` words into a `DecodedHeader(text, problems)`:
- Folding (CRLF or LF before SP/TAB, RFC 5322 2.2.3) is removed first.
- A word is recognised anywhere, as `email.header` does: charset (an RFC 2231
  `*lang` suffix is accepted and ignored, RFC 2231 5), B or Q in either case,
  then text without CR/LF up to the first "?=".
- Whitespace between two decoded words is dropped (RFC 2047 6.2); adjacent
  words in the same charset are joined as bytes before decoding, so a
  character split across words by a careless encoder comes out whole.
- Problems never raise: a charset Python does not know, or that is not a text
  encoding (never run "zlib" or "base64" codecs on mail input), keeps the word
  as it appeared (RFC 2047 6.2 (a)); bytes invalid in the charset, malformed
  base64, and 8-bit bytes that are not UTF-8 in a `bytes` value (RFC 6532)
  become U+FFFD.  Each is described in `problems`.
- A `str` value's plain text is returned exactly as given.

`encode_words(text, charset="utf-8", offset=0)` encodes `text` as encoded words
of at most 75 characters (RFC 2047 2) joined by CRLF SP, so every line holds
at most 76 characters; the first word also fits after `offset` characters
already on its line (the header name), or the result starts with a fold.  It
uses Q or B, whichever is shorter for the whole text (Q on a tie), Q in its
most restricted form (RFC 2047 5 (3)), so words may stand in any header
position.  A word never ends inside a character.  `charset="unknown-8bit"`
(RFC 1428) carries code points U+0000-U+00FF as the bytes they number, for raw
8-bit header bytes of unknown charset.
"""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["DecodedHeader", "decode_words", "encode_words"]

MAX_WORD = 75  # RFC 2047 2: an encoded-word is at most 75 characters
MAX_LINE = 76  # RFC 2047 2: a line holding encoded-words is at most 76 characters

_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_WORD = re.compile(rb"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([BbQq])\?([^\r\n]*?)\?=")
_Q_SAFE_RUN = re.compile(rb"[A-Za-z0-9!*+\-/]+")
_Q_UNSAFE_RUN = re.compile(rb"[^A-Za-z0-9!*+\-/ ]+")
_CHARSET_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'+\-^_`{}~]+\Z")
_LINEAR_WHITESPACE = b" \t\r\n"
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_B_NOT_DATA = bytes(
    b
    for b in range(256)
    if b not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)

# Labels seen in mail that Python spells differently, or whose real-world
# content is a superset (as the WHATWG Encoding Standard maps them).
_CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "gb2312": "gbk",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "x-sjis": "shift_jis",
}


class DecodedHeader(NamedTuple):
    """A decoded header value and what went wrong while decoding it (empty when nothing)."""

    text: str
    problems: tuple[str, ...]


# ---------------------------------------------------------------- payload kernels
def q_decode(payload: bytes) -> bytes:
    """Q payload to bytes (RFC 2047 4.2): "_" is SP, "=XX" a byte, a malformed "=" stays."""
    payload = payload.replace(b"_", b" ")
    if b"=" not in payload:
        return payload
    parts = payload.split(b"=")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(binascii.unhexlify(part[:2]))
            out.append(part[2:])
        else:
            out.append(b"=")
            out.append(part)
    return b"".join(out)


def b_decode(payload: bytes) -> tuple[bytes, bool]:
    """B payload to bytes, leniently; the flag is False when the payload was malformed."""
    data = payload.rstrip(b"=")
    padding = len(payload) - len(data)
    clean = data.translate(None, _B_NOT_DATA)
    leftover = len(clean) % 4
    well_formed = clean == data and leftover != 1 and (padding == 0 or padding == -len(clean) % 4)
    if leftover == 1:
        clean = clean[:-1]
    return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4)), well_formed


def q_length(data: bytes) -> int:
    """Length of `data` in Q encoding."""
    literal = sum(len(run) for run in _Q_SAFE_RUN.findall(data)) + data.count(b" ")
    return literal + 3 * (len(data) - literal)


def q_encode(data: bytes) -> bytes:
    """`data` in the restricted Q encoding of RFC 2047 5 (3)."""
    encoded = _Q_UNSAFE_RUN.sub(lambda match: b"=" + binascii.hexlify(match[0], b"=").upper(), data)
    return encoded.replace(b" ", b"_")


def b_encode(data: bytes) -> bytes:
    """`data` in base64 without line breaks."""
    return binascii.b2a_base64(data, newline=False)


# ---------------------------------------------------------------- decoding
def _scan(data: bytes) -> list[tuple[bytes, bytes | None, bytes, bool]]:
    """Split `data` into (raw, charset, decoded payload, well formed); charset None is plain text."""
    pieces: list[tuple[bytes, bytes | None, bytes, bool]] = []
    position = 0
    for match in _WORD.finditer(data):
        if match.start() > position:
            pieces.append((data[position : match.start()], None, b"", True))
        encoding = match[2]
        if encoding in b"Bb":
            payload, well_formed = b_decode(match[3])
        else:
            payload, well_formed = q_decode(match[3]), True
        pieces.append((match[0], match[1], payload, well_formed))
        position = match.end()
    if position < len(data):
        pieces.append((data[position:], None, b"", True))
    return pieces


def _codec_for(charset: str) -> str | None:
    name = _CHARSET_ALIASES.get(charset.lower(), charset)
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    # Codecs such as zlib, bz2, base64 or rot13 are not charsets; never run them on mail input.
    if not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def assemble(
    pieces: list[tuple[bytes, bytes | None, bytes, bool]], from_str: bool
) -> DecodedHeader:
    """Join scanned pieces into text (shared by both backends: charsets are Python's codecs)."""
    problems: list[str] = []
    # Resolve each word's codec; a word whose charset is unusable becomes plain text.
    resolved: list[tuple[bytes, str | None, bytes, bool]] = []
    for raw, charset_bytes, payload, well_formed in pieces:
        if charset_bytes is None:
            resolved.append((raw, None, b"", True))
            continue
        charset = charset_bytes.decode("ascii", "replace")
        codec = _codec_for(charset)
        if codec is None:
            problems.append(
                f"unknown charset {charset!r} in {raw.decode('ascii', 'replace')!r}: "
                "kept the encoded word as it was"
            )
            resolved.append((raw, None, b"", True))
            continue
        if not well_formed:
            problems.append(
                f"malformed base64 in {raw.decode('ascii', 'replace')!r}: decoded what was readable"
            )
        resolved.append((raw, codec, payload, True))

    text_parts: list[str] = []
    run_codec: str | None = None
    run_bytes: list[bytes] = []

    def flush_run() -> None:
        nonlocal run_codec
        if run_codec is not None:
            data = b"".join(run_bytes)
            try:
                text_parts.append(data.decode(run_codec))
            except UnicodeDecodeError:
                problems.append(
                    f"bytes invalid in charset {run_codec!r} in an encoded word: "
                    "replaced with U+FFFD"
                )
                text_parts.append(data.decode(run_codec, "replace"))
        run_codec = None
        run_bytes.clear()

    for index, (raw, codec, payload, _) in enumerate(resolved):
        if codec is None:
            between_words = (
                0 < index < len(resolved) - 1
                and resolved[index - 1][1] is not None
                and resolved[index + 1][1] is not None
                and not raw.strip(_LINEAR_WHITESPACE)
            )
            if between_words:
                continue  # RFC 2047 6.2: whitespace between adjacent encoded words is dropped
            flush_run()
            text_parts.append(_plain_text(raw, from_str, problems))
            continue
        if codec != run_codec:
            flush_run()
            run_codec = codec
        run_bytes.append(payload)
    flush_run()
    return DecodedHeader("".join(text_parts), tuple(problems))


def _plain_text(raw: bytes, from_str: bool, problems: list[str]) -> str:
    if from_str:
        return raw.decode("utf-8", "surrogatepass")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        problems.append("8-bit bytes in the header are not UTF-8 (RFC 6532): replaced with U+FFFD")
        return raw.decode("utf-8", "replace")


def prepare(value: str | bytes) -> tuple[bytes, bool]:
    """The value as unfolded bytes, and whether it came as str."""
    if isinstance(value, str):
        data, from_str = value.encode("utf-8", "surrogatepass"), True
    else:
        data, from_str = bytes(value), False
    if b"\n" in data:
        data = _FOLD.sub(b"", data)
    return data, from_str


def decode_words(value: str | bytes) -> DecodedHeader:
    """Decode the encoded words in a header value; see the module docstring."""
    data, from_str = prepare(value)
    if b"=?" not in data:
        return assemble([(data, None, b"", True)] if data else [], from_str)
    return assemble(_scan(data), from_str)


# ---------------------------------------------------------------- encoding
_STATELESS = ("utf-8", "latin-1", "ascii")  # codecs whose output for a string is its characters'


def plan_words(
    text: str,
    charset: str,
    offset: int,
    q_length: Callable[[bytes], int],
    q_encode: Callable[[bytes], bytes],
    b_encode: Callable[[bytes], bytes],
) -> str:
    """Cut `text` into encoded words (shared by both backends; the byte codings are passed in)."""
    if not _CHARSET_TOKEN.match(charset):
        raise ValueError(
            f"charset {charset!r} is not a MIME charset name; pass a name such as 'utf-8'"
        )
    codec = "latin-1" if charset.lower() == "unknown-8bit" else charset
    try:
        info = codecs.lookup(codec)
    except LookupError:
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"charset {charset!r} is unknown to Python; use 'utf-8'")
    if not text:
        return ""
    whole = text.encode(codec)
    use_q = q_length(whole) <= 4 * ((len(whole) + 2) // 3)
    overhead = len(charset) + 7  # "=?" charset "?Q?" ... "?="

    def fits(payload_bytes: bytes, limit: int) -> bool:
        size = q_length(payload_bytes) if use_q else 4 * ((len(payload_bytes) + 2) // 3)
        return size + overhead <= limit

    words: list[str] = []
    limit = min(MAX_WORD, MAX_LINE - offset)
    start = 0
    fold_first = False
    while start < len(text):
        end, chunk = _longest_chunk(text, start, codec, info.name in _STATELESS, limit, fits)
        if end == start:
            if not words and not fold_first and limit < MAX_WORD:
                fold_first = True  # not even one character fits after the header name
                limit = MAX_WORD
                continue
            raise ValueError(
                f"charset name {charset!r} is too long to fit one character in a "
                f"{MAX_WORD}-character encoded word; use a shorter name such as 'utf-8'"
            )
        payload = (q_encode(chunk) if use_q else b_encode(chunk)).decode("ascii")
        words.append(f"=?{charset}?{'Q' if use_q else 'B'}?{payload}?=")
        start = end
        limit = MAX_WORD
    joined = "\r\n ".join(words)
    return "\r\n " + joined if fold_first else joined


def _longest_chunk(
    text: str,
    start: int,
    codec: str,
    stateless: bool,
    limit: int,
    fits: Callable[[bytes, int], bool],
) -> tuple[int, bytes]:
    """The most whole characters from `start` whose encoded word fits in `limit`: (end, bytes)."""
    end = start
    chunk = b""
    if stateless:
        # A chunk's bytes are its characters' bytes: grow it one character at a time.
        while end < len(text):
            grown = chunk + text[end].encode(codec)
            if not fits(grown, limit):
                break
            chunk = grown
            end += 1
        return end, chunk
    # Stateful codecs (ISO-2022-JP, UTF-16, ...) must encode each candidate whole.
    while end < len(text):
        candidate = text[start : end + 1].encode(codec)
        if not fits(candidate, limit):
            break
        chunk = candidate
        end += 1
    return end, chunk


def encode_words(text: str, charset: str = "utf-8", offset: int = 0) -> str:
    """Encode `text` as folded encoded words; see the module docstring."""
    return plan_words(text, charset, offset, q_length, q_encode, b_encode)
