"""The spool's own tests: envelopes to queue, and reading back what the spool wrote."""

from __future__ import annotations

import os
from pathlib import Path

from fastmta.spool import ActiveMessage, Envelope, Recipient, Spool
from fastmta.spool.fileformat import parse_file


def body_of(path: Path) -> bytes:
    """The message content stored in spool file `path` (envelope and framing left out)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parsed = parse_file(fd)
    finally:
        os.close(fd)
    return path.read_bytes()[parsed.body_offset:parsed.body_offset + parsed.body_length]


def envelope(*addresses: str, sender: str = "alice@example.org") -> Envelope:
    """A received message's envelope: these recipients (bob@example.com if none)."""
    return Envelope(sender=sender, recipients=[Recipient(a) for a in addresses or ("bob@example.com",)],
                    client_address="192.0.2.7", helo="client.example.org")


def files(root: Path, directory: str) -> list[str]:
    """The names in one directory of the spool rooted at `root`, sorted."""
    return sorted(os.listdir(root / directory))


def claimed(spool: Spool, now: float | None = None) -> ActiveMessage:
    """The next message a delivery worker would claim; there must be one."""
    message = spool.claim_next(now)
    assert message is not None
    return message
