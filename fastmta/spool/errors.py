"""Exceptions raised by the spool.

Every spool failure is a `SpoolError`, so callers that only need "it did not work"
(the transport answering 452 4.3.1) catch one class.  Each message says which file
or message is concerned and what an operator can do about it.
"""

from __future__ import annotations

__all__ = [
    "MessageBusyError",
    "MessageNotFoundError",
    "SpoolCorruptError",
    "SpoolError",
]


class SpoolError(Exception):
    """A spool operation failed; the message says what to check or do."""


class SpoolCorruptError(SpoolError):
    """A queue file cannot be parsed (torn, truncated, foreign, or a newer format)."""


class MessageNotFoundError(SpoolError):
    """No queue file with this id exists in the queues that were searched."""


class MessageBusyError(SpoolError):
    """The message is in active/: a delivery worker owns it right now."""
