"""A lossless byte-level view of a MIME entity: header fields, body, multipart parts.

Everything here works on the bytes as they sit in the spool and never decodes
them, so a message that is not touched comes out byte for byte as it came in:
`Entity.to_bytes()` and `MultipartBody.to_bytes()` join exactly the slices the
parsers cut.

- Header block (RFC 5322 2.2): a field starts with `name:` (printable ASCII
  other than ":" and SP, optional WSP before the colon, as obs-syntax allows)
  and takes the continuation lines that start with SP or TAB.  The block ends
  at the first empty line; a line that is neither a field nor a continuation
  ends it too and starts the body (as mail readers treat a missing empty line).
  Lines end in CRLF or, tolerated, a lone LF.
- Multipart body (RFC 2046 5.1.1): a delimiter is "--" boundary at the start of
  a line, "--" more for the close delimiter, then only SP/TAB up to the line
  end.  The line break before a delimiter belongs to it, not to the part.  A
  missing close delimiter leaves the last part running to the end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "Entity",
    "MultipartBody",
    "field_name",
    "field_value",
    "find_field",
    "parse_entity",
    "split_multipart",
]

_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


@dataclass
class Entity:
    """Header fields (each with its folding and line end, as written), the empty line, the body."""

    fields: list[bytes]
    separator: bytes  # b"\r\n" or b"\n" ending the header block, b"" when there was none
    body: bytes

    def to_bytes(self) -> bytes:
        return b"".join(self.fields) + self.separator + self.body

    @property
    def line_end(self) -> bytes:
        """The line end this entity uses (CRLF unless its header block used lone LF)."""
        first = self.fields[0] if self.fields else self.separator
        return b"\n" if first.endswith(b"\n") and not first.endswith(b"\r\n") else b"\r\n"


def parse_entity(data: bytes) -> Entity:
    """Split `data` into header fields, the empty line and the body."""
    fields: list[list[bytes]] = []
    position = 0
    size = len(data)
    while position < size:
        newline = data.find(b"\n", position)
        line_end = size if newline < 0 else newline + 1
        line = data[position:line_end]
        if line == b"\r\n" or line == b"\n":
            return Entity([b"".join(lines) for lines in fields], line, data[line_end:])
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1].append(line)
        elif _FIELD_START.match(line):
            fields.append([line])
        else:
            break  # not a header line: the body starts here
        position = line_end
    return Entity([b"".join(lines) for lines in fields], b"", data[position:])


def field_name(raw_field: bytes) -> bytes:
    """The field's name, lower-cased (b"content-type")."""
    return raw_field.split(b":", 1)[0].strip().lower()


def field_value(raw_field: bytes) -> bytes:
    """The field's value: unfolded (RFC 5322 2.2.3), without its line end and outer whitespace."""
    value = raw_field.split(b":", 1)[1] if b":" in raw_field else b""
    return _FOLD.sub(b"", value).strip(b" \t\r\n")


def find_field(fields: list[bytes], name: bytes) -> int | None:
    """Index of the first field called `name` (lower case), or None."""
    for index, raw_field in enumerate(fields):
        if field_name(raw_field) == name:
            return index
    return None


@dataclass
class MultipartBody:
    """A multipart body cut at its delimiter lines; `to_bytes()` gives the input back."""

    preamble: bytes
    parts: list[tuple[bytes, bytes]] = field(default_factory=list)  # (delimiter line, part)
    close: bytes = b""  # the close delimiter line, b"" if it was missing
    epilogue: bytes = b""

    def to_bytes(self) -> bytes:
        pieces = [self.preamble]
        for delimiter, part in self.parts:
            pieces.append(delimiter)
            pieces.append(part)
        pieces.append(self.close)
        pieces.append(self.epilogue)
        return b"".join(pieces)


def split_multipart(body: bytes, boundary: bytes) -> MultipartBody:
    """Cut `body` at the delimiter lines of `boundary` (RFC 2046 5.1.1)."""
    marker = b"--" + boundary
    size = len(body)
    cuts: list[tuple[int, int, bool]] = []  # (delimiter start, end, is close)
    position = 0
    while True:
        at = body.find(marker, position)
        if at < 0:
            break
        if at == 0 or body[at - 1] == 0x0A:
            after = at + len(marker)
            closing = body.startswith(b"--", after)
            end = after + 2 if closing else after
            while end < size and body[end] in (0x20, 0x09):
                end += 1
            if end == size or body[end] == 0x0A or body.startswith(b"\r\n", end):
                end += 0 if end == size else (1 if body[end] == 0x0A else 2)
                start = at
                if at >= 2 and body[at - 2 : at] == b"\r\n":
                    start = at - 2
                elif at >= 1:
                    start = at - 1
                cuts.append((max(start, position), end, closing))
                position = end
                if closing:
                    break
                continue
        position = at + 1
    if not cuts:
        return MultipartBody(preamble=body)
    result = MultipartBody(preamble=body[: cuts[0][0]])
    for index, (start, end, closing) in enumerate(cuts):
        if closing:
            result.close = body[start:end]
            result.epilogue = body[end:]
            break
        part_end = cuts[index + 1][0] if index + 1 < len(cuts) else size
        result.parts.append((body[start:end], body[end:part_end]))
    return result
