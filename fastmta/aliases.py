"""Reading an aliases file (the aliases(5) format): local name -> addresses.

Format, one logical line per alias:

    # comment
    postmaster: root
    root:       alice, bob@example.org,
                <carol@example.net>

- "name: target, target, ..."; a line starting with blanks continues the
  previous logical line; empty lines and lines whose first non-blank character
  is "#" are ignored.
- Names are local parts (a dot-atom), matched case-insensitively: stored lower-case.
- A target is a mailbox ("user@domain", optionally in <>) or a local name
  ("alice", resolved at the recipient's domain).
- Deliveries to a command ("|..."), a file ("/...") and ":include:" lists are
  refused: fastmta only delivers to mailboxes, so mail can never run a program.

Errors raise `AliasesError` with "file:line: what is wrong; what to do".
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from fastmta.protocol.address import parse_mailbox

__all__ = ["AliasesError", "load_aliases", "parse_aliases"]

_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*")


class AliasesError(ValueError):
    """The aliases file cannot be used; the message names file:line and the fix."""


def load_aliases(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Parse the aliases file at `path`."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise AliasesError(f"{path}: no such file; create it or fix the aliases_file setting") from None
    except UnicodeDecodeError as exc:
        raise AliasesError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                           "save the file as UTF-8") from None
    except OSError as exc:
        raise AliasesError(f"{path}: cannot read it ({exc.strerror}); check its permissions") from None
    return parse_aliases(text, str(path))


def parse_aliases(text: str, source: str = "<aliases>") -> dict[str, tuple[str, ...]]:
    """Parse aliases(5) text; `source` names the file in error messages."""
    aliases: dict[str, tuple[str, ...]] = {}
    defined_at: dict[str, int] = {}
    for number, logical in _logical_lines(text, source):
        where = f"{source}:{number}"
        name, colon, value = logical.partition(":")
        name = name.strip()
        if not colon:
            raise AliasesError(f"{where}: expected 'name: address, address', got {logical.strip()!r}")
        if _NAME_RE.fullmatch(name) is None:
            raise AliasesError(f"{where}: {name!r} is not a valid alias name; use a plain local "
                               "part such as 'postmaster' or 'sales.team'")
        key = name.lower()
        if key in defined_at:
            raise AliasesError(f"{where}: alias {name!r} is already defined at line "
                               f"{defined_at[key]}; merge the two lines into one")
        targets = tuple(_target(item, where) for item in _split_targets(value, where))
        if not targets:
            raise AliasesError(f"{where}: alias {name!r} has no targets; add at least one address")
        aliases[key] = targets
        defined_at[key] = number
    return aliases


def _logical_lines(text: str, source: str) -> Iterator[tuple[int, str]]:
    """(first line number, joined text) per logical line."""
    start = 0
    parts: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t":
            if not parts:
                raise AliasesError(f"{source}:{number}: continuation line with nothing to "
                                   "continue; remove the leading blanks")
            parts.append(stripped)
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = number, [stripped]
    if parts:
        yield start, " ".join(parts)


def _split_targets(value: str, where: str) -> list[str]:
    """Comma-separated targets; commas inside double quotes do not separate."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if quoted:
        raise AliasesError(f"{where}: unbalanced double quote; close the quoted local part")
    items.append("".join(current).strip())
    return [item for item in items if item]


def _target(item: str, where: str) -> str:
    if item.startswith(("|", '"|')):
        raise AliasesError(f"{where}: {item!r} delivers to a command, which fastmta does not do; "
                           "deliver to an address and run programs from the mailbox instead")
    if item.startswith(("/", ":include:")):
        raise AliasesError(f"{where}: {item!r} is a file or :include: list, which fastmta does not "
                           "support; list the addresses here instead")
    if item.startswith("<") and item.endswith(">"):
        item = item[1:-1].strip()
    if "@" in item:
        if parse_mailbox(item) is None:
            raise AliasesError(f"{where}: {item!r} is not a valid address; write it as user@domain")
        return item
    if _NAME_RE.fullmatch(item) is None:
        raise AliasesError(f"{where}: {item!r} is neither an address nor a local name; write it "
                           "as user@domain or as a plain local name")
    return item.lower()
