"""Type stub for the compiled SMTP command-line splitter (twin: fastmta._pure.lines)."""

from typing_extensions import Buffer

__all__ = [
    "LINE_BARE_CR",
    "LINE_BARE_LF",
    "LINE_NUL",
    "LINE_OK",
    "LINE_TOO_LONG",
    "LineSplitter",
]

LINE_OK: int
LINE_TOO_LONG: int
LINE_BARE_LF: int
LINE_BARE_CR: int
LINE_NUL: int

class LineSplitter:
    """Split a byte stream into CRLF-terminated lines of at most `limit` octets."""

    @property
    def limit(self) -> int: ...
    def __init__(self, limit: int = 512) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: Buffer) -> None: ...
    def next_line(self) -> tuple[bytes, int] | None: ...
    def take_rest(self) -> bytes: ...
