"""7-bit forms of header fields that carry raw 8-bit bytes (RFC 2047, RFC 2231, RFC 6532).

`encode_field(raw_field)` returns an equivalent field made of ASCII only:
- Unstructured fields (Subject, Comments, X-..., Received and anything not
  listed below): the stretch from the first to the last word with 8-bit
  bytes becomes RFC 2047 encoded words; ASCII words around it stay readable.
- Address fields (From, To, Cc, ...): display names and comments with 8-bit
  bytes become encoded words (RFC 2047 5 (2), (3)); a quoted display name is
  unquoted first, as an encoded word may not stand inside quotes.  8-bit bytes
  in an address itself cannot be expressed in 7 bits: `DowngradeError`
  (such mail needs SMTPUTF8, RFC 6531, or a bounce with 5.6.7).
- Content-Type and Content-Disposition: 8-bit parameter values are rewritten
  in RFC 2231 form (`filename*=utf-8''...`).
8-bit text that is valid UTF-8 (RFC 6532) is labelled utf-8; anything else
`unknown-8bit` (RFC 1428), carrying the bytes unchanged.  The result is
folded at whitespace so that no line passes 76 characters where that can be
done, and ends in CRLF.
"""

from __future__ import annotations

import re

from fastmta import kernels
from fastmta.mime.entity import field_value
from fastmta.mime.params import format_value, parse_value

__all__ = ["ADDRESS_FIELDS", "DowngradeError", "encode_field", "header_charset"]

ADDRESS_FIELDS = frozenset(
    {
        b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
        b"resent-from", b"resent-sender", b"resent-to", b"resent-cc", b"resent-bcc",
        b"return-path", b"disposition-notification-to", b"mail-followup-to",
        b"mail-reply-to", b"errors-to", b"delivered-to", b"x-original-to",
    }
)  # fmt: skip
PARAMETER_FIELDS = frozenset({b"content-type", b"content-disposition"})
MAX_LINE = 76

# Address-field tokens: quoted string, comment (one nesting level is enough
# to find its end for the common case; deeper ones are kept whole), angle
# address, domain literal, whitespace, specials, atoms.
_ADDRESS_TOKEN = re.compile(
    r'(?P<quoted>"(?:[^"\\]|\\.)*"?)'
    r"|(?P<comment>\((?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\))*\)?)"
    r"|(?P<angle><[^>]*>?)"
    r"|(?P<literal>\[[^\]]*\]?)"
    r"|(?P<space>[ \t]+)"
    r"|(?P<special>[,:;@.])"
    r'|(?P<atom>[^ \t"(<\[,:;@.]+)',
    re.DOTALL,
)
_SPACES = re.compile(r"([ \t]+)")


class DowngradeError(ValueError):
    """The message cannot be made 7-bit without changing what it means."""


def header_charset(raw: bytes) -> tuple[str, str]:
    """(text, charset) for 8-bit header bytes: UTF-8 if they are, else unknown-8bit."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "unknown-8bit"


def encode_field(raw_field: bytes) -> bytes:
    """An ASCII-only equivalent of `raw_field` (see the module docstring)."""
    raw_name = raw_field.split(b":", 1)[0].strip()
    name = raw_name.lower()
    value = field_value(raw_field)
    prefix = raw_name + b": "
    if name in PARAMETER_FIELDS:
        parsed = parse_value(value, whole=True)
        if parsed is not None:
            kind, params = parsed
            folded = prefix + format_value(kind, params, len(prefix))
            if folded.isascii():
                return folded + b"\r\n"
    text, charset = header_charset(value)
    if name in ADDRESS_FIELDS:
        encoded = _encode_addresses(text, charset, raw_name.decode("ascii", "replace"))
    else:
        encoded = _encode_unstructured(text, charset)
    return _fold(prefix.decode("ascii"), encoded).encode("ascii") + b"\r\n"


def _encoded_words(text: str, charset: str) -> list[str]:
    return kernels.encode_words(text, charset).split("\r\n ")


def _encode_unstructured(text: str, charset: str) -> str:
    """The stretch from the first to the last 8-bit word becomes encoded words."""
    parts = _SPACES.split(text)  # words at even indexes, whitespace at odd ones
    eight_bit = [index for index in range(0, len(parts), 2) if not parts[index].isascii()]
    if not eight_bit:
        return text
    first, last = eight_bit[0], eight_bit[-1]
    middle = "".join(parts[first : last + 1])
    return (
        "".join(parts[:first])
        + " ".join(_encoded_words(middle, charset))
        + "".join(parts[last + 1 :])
    )


def _encode_addresses(text: str, charset: str, field: str) -> str:
    out: list[str] = []
    phrase: list[tuple[str, str]] = []  # tokens since the last "," ":" ";" or "<"

    def flush(display_name: bool) -> None:
        if not display_name and any(
            kind != "comment" and not token.isascii() for kind, token in phrase
        ):
            raise _address_error(field)
        run: list[tuple[str, str]] = []
        for kind, token in phrase + [("comment", "")]:
            if kind != "comment":
                run.append((kind, token))
                continue
            out.extend(_display_name(run, charset))
            run = []
            if token and not token.isascii():
                inner = token[1:-1] if token.endswith(")") else token[1:]
                out.append("(" + " ".join(_encoded_words(_unescape(inner), charset)) + ")")
            elif token:
                out.append(token)
        phrase.clear()

    for match in _ADDRESS_TOKEN.finditer(text):
        kind = match.lastgroup or "atom"
        token = match[0]
        if kind == "angle" or (kind == "special" and token == ":"):
            flush(display_name=True)
            if not token.isascii():
                raise _address_error(field)
            out.append(token)
        elif kind == "special" and token in ",;":
            flush(display_name=False)
            out.append(token)
        else:
            phrase.append((kind, token))
    flush(display_name=False)
    return "".join(out)


def _address_error(field: str) -> DowngradeError:
    return DowngradeError(
        f"the {field} field holds an address with non-ASCII characters; relay the message "
        "only to a server that offers SMTPUTF8 (RFC 6531), or return it to the sender (5.6.7)"
    )


def _display_name(run: list[tuple[str, str]], charset: str) -> list[str]:
    """Tokens of a display name, as encoded words if any of it is 8-bit."""
    if all(token.isascii() for _, token in run):
        return [token for _, token in run]
    start = 0
    while start < len(run) and run[start][0] == "space":
        start += 1
    end = len(run)
    while end > start and run[end - 1][0] == "space":
        end -= 1
    text = "".join(
        _unescape(token[1:-1] if token.endswith('"') and len(token) > 1 else token[1:])
        if kind == "quoted"
        else token
        for kind, token in run[start:end]
    )
    lead = [token for _, token in run[:start]]
    trail = [token for _, token in run[end:]]
    return lead + [" ".join(_encoded_words(text, charset))] + trail


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def _fold(prefix: str, value: str) -> str:
    """`prefix` + `value`, with CRLF put before whitespace where a line would pass 76 columns.

    Folding only inserts CRLF before existing whitespace, so unfolding gives
    `value` back (RFC 5322 2.2.3).  Encoded words hold no whitespace.
    """
    tokens = _SPACES.split(value)  # words at even indexes, whitespace at odd ones
    out = [prefix, tokens[0]]
    column = len(prefix) + len(tokens[0])
    for index in range(1, len(tokens) - 1, 2):
        space, word = tokens[index], tokens[index + 1]
        if column + len(space) + len(word) > MAX_LINE:
            out.append("\r\n")
            column = 0
        out.append(space)
        out.append(word)
        column += len(space) + len(word)
    return "".join(out)
