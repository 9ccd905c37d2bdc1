"""Queue ids: unique across processes and hosts, sortable by arrival, filename-safe.

An id is 20 characters of Crockford base32 (`0-9` then `A-Z` without I, L, O, U;
the alphabet is in ASCII order, so comparing two ids as strings compares what they
encode):

    TTTTTTTTTTT HHHH PPPPP
    |           |    `- 5 chars, 25 bits: process id (Linux pid_max is at most 2**22)
    |           `------ 4 chars, 20 bits: host tag, a hash of hostname, machine-id, boot-id
    `------------------ 11 chars, 55 bits: arrival time in microseconds since the epoch
                        (enough until the year 3111)

Invariants:
- Lexicographic order is arrival order (to the microsecond; ids minted in the same
  microsecond on different processes or hosts order by host tag, then pid).
- One process never mints the same time twice: if the clock has not moved (or went
  backwards) since the last id, the next id takes the last time + 1 us.  So an id is
  unique per (host, pid) and the pid and host parts separate processes and hosts.
  The host tag changes at each boot, so a pid reused after a reboot with a clock
  set back cannot repeat an id either.
- Only `[0-9A-Z]`: safe as a file name everywhere, including case-insensitive file
  systems; `is_queue_id` is the check to apply to ids typed by an operator.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time

__all__ = ["QUEUE_ID_LENGTH", "is_queue_id", "new_queue_id", "normalise_queue_id", "queue_id_time"]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {char: index for index, char in enumerate(ALPHABET)}
_TIME_CHARS = 11
_HOST_CHARS = 4
_PID_CHARS = 5
QUEUE_ID_LENGTH = _TIME_CHARS + _HOST_CHARS + _PID_CHARS
_QUEUE_ID_RE = re.compile(f"[{ALPHABET}]{{{QUEUE_ID_LENGTH}}}")


def _encode(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(ALPHABET[number & 31])
        number >>= 5
    return "".join(reversed(chars))


def _read_small_file(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(200).strip()
    except OSError:
        return ""


def _host_tag() -> str:
    """20 bits that differ between hosts (and boots) with high probability."""
    identity = "\0".join((
        socket.gethostname(),
        _read_small_file("/etc/machine-id"),
        _read_small_file("/proc/sys/kernel/random/boot_id"),
    ))
    digest = hashlib.blake2b(identity.encode("utf-8", "replace"), digest_size=4).digest()
    return _encode(int.from_bytes(digest, "big") & 0xFFFFF, _HOST_CHARS)


class _Minter:
    """Per-process id state; the suffix is recomputed in a forked child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_us = 0
        self.host = _host_tag()
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        # A fresh lock: the parent may have held the old one at fork time.
        self.lock = threading.Lock()
        self.suffix = self.host + _encode(os.getpid() & 0x1FFFFFF, _PID_CHARS)

    def mint(self) -> tuple[str, float]:
        with self.lock:
            now_us = time.time_ns() // 1000
            if now_us <= self.last_us:
                now_us = self.last_us + 1
            self.last_us = now_us
        return _encode(now_us, _TIME_CHARS) + self.suffix, now_us / 1e6


_minter = _Minter()
os.register_at_fork(after_in_child=_minter.reset_after_fork)


def new_queue_id() -> tuple[str, float]:
    """A fresh id and the arrival time (seconds since the epoch) it encodes."""
    return _minter.mint()


def is_queue_id(text: str) -> bool:
    """True if `text` is exactly a queue id (upper case): safe to join to a path."""
    return _QUEUE_ID_RE.fullmatch(text) is not None


def normalise_queue_id(text: str) -> str | None:
    """An operator's spelling of an id (any case, spaces around) as the id, or None."""
    candidate = text.strip().upper()
    return candidate if is_queue_id(candidate) else None


def queue_id_time(queue_id: str) -> float:
    """The arrival time encoded in a queue id, in seconds since the epoch."""
    if not is_queue_id(queue_id):
        raise ValueError(f"not a fastmta queue id: {queue_id!r} (expected {QUEUE_ID_LENGTH} chars of 0-9, A-Z)")
    micros = 0
    for char in queue_id[:_TIME_CHARS]:
        micros = micros * 32 + _VALUE[char]
    return micros / 1e6
