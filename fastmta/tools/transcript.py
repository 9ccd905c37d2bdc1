"""How a dialogue with an SMTP server is shown to a person, in the manner of `sendmail -v`.

Commands we send get ">>> " in front (Stevens, TCP/IP Illustrated vol. 1, ch. 28); replies
are shown as received; connection events ("Trying ...", "Connected to ...") as they are.
"""

from __future__ import annotations

from collections.abc import Callable

from fastmta.protocol.client import Direction, Transcript

__all__ = ["format_line", "printer"]


def format_line(direction: Direction, text: str) -> str:
    if direction is Direction.SENT:
        return f">>> {text}"
    return text


def printer(write: Callable[[str], None], indent: str = "") -> Transcript:
    """A transcript callback that writes each line through `write` (e.g. print)."""

    def show(direction: Direction, text: str) -> None:
        for line in text.split("\n"):
            write(indent + format_line(direction, line))

    return show
