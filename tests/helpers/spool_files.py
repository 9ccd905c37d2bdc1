"""Reading back what the spool wrote, for the spool's own tests."""

from __future__ import annotations

import os
from pathlib import Path

from fastmta.spool.fileformat import parse_file


def body_of(path: Path) -> bytes:
    """The message content stored in spool file `path` (envelope and framing left out)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parsed = parse_file(fd)
    finally:
        os.close(fd)
    return path.read_bytes()[parsed.body_offset:parsed.body_offset + parsed.body_length]
