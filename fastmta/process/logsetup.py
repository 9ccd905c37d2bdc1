"""One log format for every fastmta process: each line names the process role and pid.

    2026-11-29 10:00:00,123 receive.1[4242] INFO fastmta.smtpd: 127.0.0.1:50000: ...

The role is "master", "receive.N", "delivery.N" or "single" (`--workers 0`); a forked
child calls `set_role` first thing.  Lines go to stderr (journald or the terminal);
each is written with one write(), so lines of different processes never interleave
(below PIPE_BUF octets).
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(role)s[%(process)d] %(levelname)s %(name)s: %(message)s"

_role = "master"
_handler: logging.Handler | None = None


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


def set_role(role: str) -> None:
    global _role
    _role = role


def role() -> str:
    return _role


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr in the common format (idempotent)."""
    global _handler
    root = logging.getLogger()
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter(FORMAT))
        _handler.addFilter(_RoleFilter())
        root.addHandler(_handler)
    root.setLevel(level)
