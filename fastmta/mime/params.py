"""Content-Type and Content-Disposition values: parsing and writing (RFC 2045 5.1, RFC 2231).

Parsing is forgiving, as a mail relay must be: comments are skipped, quoted
strings unescaped, parameter names lower-cased, 8-bit bytes accepted inside
tokens, and parsing stops quietly at the first thing it cannot read, keeping
what it read so far.  Values stay bytes; RFC 2231 continuations (`name*0`,
`name*1*`, ...) and `name*=charset'lang'%XX` values are joined and
percent-decoded by `get_param` (the charset is not applied: boundaries and
charset names are ASCII).

Writing (`format_value`) puts each parameter on its own folded line; a value
with 8-bit bytes is written in RFC 2231 form (`name*=utf-8''%C3%A9`, or
`unknown-8bit` when the bytes are not UTF-8), split into `name*0*`, `name*1*`
sections when it would not fit a 76-column line.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

__all__ = ["ContentType", "format_value", "get_param", "parse_value"]

# RFC 2045 5.1: token characters are printable ASCII except SP and tspecials
# ()<>@,;:\"/[]?=  (8-bit bytes are let in: real mail has them).
_TOKEN = re.compile(rb'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]+')
# RFC 2231 7: attribute-char, what may stay unescaped in an extended value.
_ATTRIBUTE_CHAR = re.compile(rb"[!#$&+\-.0-9A-Z^_`a-z{|}~]")
_SECTION = re.compile(r"(?P<name>[^*]+)\*(?P<number>[0-9]+)(?P<encoded>\*?)\Z")
MAX_LINE = 76

ContentType = tuple[bytes, list[tuple[str, bytes]]]  # (b"type/subtype" lower-cased, params)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def skip_cfws(self) -> None:
        data = self.data
        while self.position < len(data):
            char = data[self.position]
            if char in b" \t\r\n":
                self.position += 1
            elif char == 0x28:  # "(": a comment, possibly nested
                depth = 0
                while self.position < len(data):
                    char = data[self.position]
                    if char == 0x5C:
                        self.position += 1
                    elif char == 0x28:
                        depth += 1
                    elif char == 0x29:
                        depth -= 1
                        if depth == 0:
                            self.position += 1
                            break
                    self.position += 1
            else:
                return

    def token(self) -> bytes | None:
        match = _TOKEN.match(self.data, self.position)
        if match is None:
            return None
        self.position = match.end()
        return match[0]

    def expect(self, char: bytes) -> bool:
        self.skip_cfws()
        if self.data.startswith(char, self.position):
            self.position += 1
            return True
        return False

    def quoted(self) -> bytes:
        """A quoted-string starting at the current '"', unescaped."""
        data = self.data
        out = bytearray()
        position = self.position + 1
        while position < len(data):
            char = data[position]
            if char == 0x5C and position + 1 < len(data):
                out.append(data[position + 1])
                position += 2
                continue
            if char == 0x22:
                position += 1
                break
            out.append(char)
            position += 1
        self.position = position
        return bytes(out)


def parse_value(value: bytes, whole: bool = False) -> ContentType | None:
    """`type/subtype; params` (or `disposition; params` when there is no "/"); None if unreadable.

    With `whole`, also None when something after the last readable parameter was
    skipped: a caller that writes the value anew must not lose it.
    """
    reader = _Reader(value)
    reader.skip_cfws()
    kind = reader.token()
    if kind is None:
        return None
    if reader.expect(b"/"):
        reader.skip_cfws()
        subtype = reader.token()
        if subtype is None:
            return None
        kind = kind + b"/" + subtype
    params: list[tuple[str, bytes]] = []
    while reader.expect(b";"):
        reader.skip_cfws()
        name = reader.token()
        if name is None or not reader.expect(b"="):
            break
        reader.skip_cfws()
        if reader.data.startswith(b'"', reader.position):
            param_value = reader.quoted()
        else:
            token = reader.token()
            if token is None:
                break
            param_value = token
        params.append((name.decode("ascii", "replace").lower(), param_value))
    if whole:
        reader.expect(b";")  # a trailing ";" loses nothing
        reader.skip_cfws()
        if reader.position < len(reader.data):
            return None
    return kind.lower(), params


def get_param(params: list[tuple[str, bytes]], name: str) -> bytes | None:
    """The value of parameter `name`, RFC 2231 sections joined and %XX decoded; None if absent."""
    for key, value in params:
        if key == name:
            return value
    for key, value in params:
        if key == name + "*":
            return _extended(value, first=True)
    sections = []
    for key, value in params:
        match = _SECTION.match(key)
        if match and match["name"] == name:
            sections.append((int(match["number"]), value, bool(match["encoded"])))
    if not sections:
        return None
    sections.sort(key=lambda section: section[0])
    return b"".join(
        _extended(value, first=number == 0) if encoded else value
        for number, value, encoded in sections
    )


def _extended(value: bytes, first: bool) -> bytes:
    if first and value.count(b"'") >= 2:
        value = value.split(b"'", 2)[2]  # drop charset'language'
    return unquote_to_bytes(value)


def format_value(kind: bytes, params: list[tuple[str, bytes]], column: int) -> bytes:
    """`kind; name=value; ...`, folded before a parameter that would pass column 76.

    `column` is where the value starts on its line (after "Content-Type: ").
    """
    out = [kind]
    line = column + len(kind)
    for name, value in params:
        for section in _param_sections(name, value):
            out.append(b";")
            line += 1
            if line + 1 + len(section) > MAX_LINE:
                out.append(b"\r\n ")
                line = 1
            else:
                out.append(b" ")
                line += 1
            out.append(section)
            line += len(section)
    return b"".join(out)


def _param_sections(name: str, value: bytes) -> list[bytes]:
    raw_name = name.encode("ascii")
    if value.isascii():
        if value and _TOKEN.fullmatch(value):
            return [raw_name + b"=" + value]
        escaped = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return [raw_name + b'="' + escaped + b'"']
    try:
        value.decode("utf-8")
        charset = b"utf-8"
    except UnicodeDecodeError:
        charset = b"unknown-8bit"
    escaped_chars = [
        bytes([byte]) if _ATTRIBUTE_CHAR.match(bytes([byte])) else b"%%%02X" % byte
        for byte in value
    ]
    whole = raw_name + b"*=" + charset + b"''" + b"".join(escaped_chars)
    if len(whole) + 2 <= MAX_LINE:
        return [whole]
    sections: list[bytes] = []
    current = charset + b"''"
    for escaped in escaped_chars:
        prefix = raw_name + b"*%d*=" % len(sections)
        if len(prefix) + len(current) + len(escaped) + 2 > MAX_LINE:
            sections.append(prefix + current)
            current = b""
        current += escaped
    sections.append(raw_name + b"*%d*=" % len(sections) + current)
    return sections
