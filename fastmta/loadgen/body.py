"""The test message the load generator sends: realistic text, built once per run.

`build_content()` returns the message exactly as a server should store it (headers,
blank line, body), and `wire_data()` its DATA form (dot-stuffed, ended by ".CRLF").

Invariants of the content:
- Exactly `size` octets, 7-bit ASCII, every line ended by CRLF (RFC 5322 2.1),
  no line longer than 998 octets plus CRLF (RFC 5321 4.5.3.1.6).
- It exercises a server's DATA path: lines of varied length, blank lines, a few
  lines that begin with "." (including a line that is only "." and one that is
  only ".."), and from 2 KiB up a few long lines of 800 to 988 octets.
- The same `size` and `seed` give the same body (the Date and Message-ID headers
  come from the caller), so runs are comparable.
"""

from __future__ import annotations

import random

__all__ = ["build_content", "dot_stuff", "minimum_size", "wire_data"]

MAX_LINE = 998  # octets before CRLF, RFC 5321 4.5.3.1.6
LONG_LINE_MIN, LONG_LINE_MAX = 800, 988

# Lines that a sloppy DATA reader gets wrong: a lone "." would end the message if
# the client forgot to stuff it, ".." must come back as ".", and a dot before text
# must be removed exactly once (RFC 5321 4.5.2).
DOT_LINES = (
    ".",
    ". A line that starts with a dot and a space.",
    "..",
    ".hidden directory names start with a dot",
    "...and an ellipsis that opens a sentence",
    ".\tdot then a tab",
)

# Common English words and mail vocabulary: text that compresses and scans like real mail.
_WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "they", "you", "were", "her", "she", "there", "been", "one", "all", "we", "their", "has",
    "would", "when", "if", "so", "no", "what", "up", "said", "out", "about", "into", "them",
    "can", "more", "only", "time", "could", "new", "some", "these", "two", "may", "first",
    "then", "do", "any", "like", "my", "now", "over", "such", "our", "man", "me", "even",
    "most", "made", "after", "also", "did", "many", "before", "must", "through", "back",
    "years", "where", "much", "your", "way", "well", "down", "should", "because", "each",
    "just", "those", "people", "queue", "message", "delivery", "server", "relay", "mailbox",
    "sender", "recipient", "envelope", "header", "domain", "report", "invoice", "meeting",
    "tomorrow", "schedule", "attached", "please", "review", "thanks", "regards", "project",
    "budget", "quarter", "update", "release", "notes", "customer", "support", "ticket", "order",
    "shipment", "account", "a", "I",
)
_WORDS_BY_LENGTH: dict[int, list[str]] = {}
for _word in _WORDS:
    _WORDS_BY_LENGTH.setdefault(len(_word), []).append(_word)
_LONGEST_WORDS = [word for word in _WORDS if len(word) >= 8]


def minimum_size(headers: bytes) -> int:
    """Smallest `size` for these headers: the headers, the blank line, one line of body."""
    return len(headers) + 2 + 3


def build_headers(sender: str, recipient: str, date: str, message_id: str) -> bytes:
    """RFC 5322 header block (ends with the CRLF of its last field, not the blank line)."""
    fields = (
        f"From: Load Generator <{sender}>",
        f"To: <{recipient}>",
        "Subject: fastmta loadgen test message",
        f"Date: {date}",
        f"Message-ID: <{message_id}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    )
    return "".join(field + "\r\n" for field in fields).encode("ascii")


def build_content(size: int, headers: bytes, seed: int = 1) -> bytes:
    """A message of exactly `size` octets: `headers`, a blank line and generated text."""
    if size < minimum_size(headers):
        raise ValueError(
            f"message size {size} is too small for the {len(headers)} octets of headers; "
            f"use a size of at least {minimum_size(headers)}"
        )
    rng = random.Random(seed)
    budget = size - len(headers) - 2  # octets of body, CRLFs included
    specials = _special_lines(budget, rng)
    # Spread the special lines evenly through the body.
    stride = budget // (len(specials) + 1)
    next_special_at = stride
    lines: list[str] = []
    used = 0
    while budget - used >= 160:
        if specials and used >= next_special_at:
            line = specials.pop(0)
            next_special_at += stride
        elif lines and lines[-1] and rng.random() < 0.15:
            line = ""  # paragraph break
        else:
            line = _text_line(rng, rng.randint(20, 76))
        if used + len(line) + 2 > budget - 5:
            break
        lines.append(line)
        used += len(line) + 2
    # Fill what is left with ordinary lines (at least 5 octets are left here, or the
    # whole budget of at least 3), never leaving a single octet no line can take.
    left = budget - used
    while left > 0:
        length = min(left - 2, 76)
        if left - (length + 2) == 1:
            length -= 1
        lines.append(_text_line(rng, length))
        left -= length + 2
    body = "".join(line + "\r\n" for line in lines).encode("ascii")
    content = headers + b"\r\n" + body
    assert len(content) == size, (len(content), size)
    return content


def _special_lines(budget: int, rng: random.Random) -> list[str]:
    dot_count = min(len(DOT_LINES), max(2, budget // 2048))
    specials = [line for line in DOT_LINES[:dot_count] if len(line) + 2 < budget // 4]
    long_count = 0 if budget < 2048 else min(8, max(1, budget // 16384))
    for index in range(long_count):
        # Long lines go between the dot lines, so each kind is spread through the body.
        specials.insert(2 * index + 1, _text_line(rng, rng.randint(LONG_LINE_MIN, LONG_LINE_MAX)))
    return specials


def _text_line(rng: random.Random, length: int) -> str:
    """Whole words filling exactly `length` characters; never starts with a dot."""
    line = ""
    while True:
        word = rng.choice(_WORDS)
        gap = length - len(line) - (1 if line else 0)
        if len(word) > gap:
            break
        line = f"{line} {word}" if line else word
    gap = length - len(line)
    if gap == 1:
        return line + "." if line else "a"
    if gap >= 2:
        if not line:
            return _fitting_word(rng, gap)
        return line + " " + _fitting_word(rng, gap - 1)
    return line


def _fitting_word(rng: random.Random, length: int) -> str:
    candidates = _WORDS_BY_LENGTH.get(length)
    if candidates:
        return rng.choice(candidates)
    return (rng.choice(_LONGEST_WORDS) * (length // 8 + 1))[:length]


def dot_stuff(content: bytes) -> bytes:
    """Double every dot that begins a line (RFC 5321 4.5.2); `content` ends with CRLF."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def wire_data(content: bytes) -> bytes:
    """What goes on the wire after the 354: stuffed content, then ".CRLF" (RFC 5321 4.1.1.4)."""
    if not content.endswith(b"\r\n"):
        raise ValueError("message content must end with CRLF")
    return dot_stuff(content) + b".\r\n"
