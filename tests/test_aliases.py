"""The aliases file: aliases(5) syntax, and errors that name file:line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastmta.aliases import AliasesError, load_aliases, parse_aliases

GOOD = """\
# system aliases
postmaster: root
Root:       alice,
            bob@example.org ,
    # a comment inside a continuation is skipped
            <carol@example.net>

sales.team: "quoted, name"@example.com, dave
"""


def test_parses_names_targets_continuations_and_comments() -> None:
    assert parse_aliases(GOOD) == {
        "postmaster": ("root",),
        "root": ("alice", "bob@example.org", "carol@example.net"),
        "sales.team": ('"quoted, name"@example.com', "dave"),
    }


def test_empty_file() -> None:
    assert parse_aliases("") == {}
    assert parse_aliases("# only comments\n\n   \n") == {}


@pytest.mark.parametrize(("text", "line", "fix"), [
    ("root alice\n", 1, "expected 'name: address"),
    ("\n\nbad name: x\n", 3, "not a valid alias name"),
    ("root: alice\nROOT: bob\n", 2, "already defined at line 1; merge"),
    ("root:\n", 1, "has no targets"),
    ("root: |/usr/bin/prog\n", 1, "delivers to a command"),
    ('root: "|prog"\n', 1, "delivers to a command"),
    ("root: /var/mail/root\n", 1, "file or :include:"),
    ("root: :include:/etc/list\n", 1, "file or :include:"),
    ("root: a@@b\n", 1, "not a valid address"),
    ("root: two words\n", 1, "neither an address nor a local name"),
    ('root: "open@example.com\n', 1, "unbalanced double quote"),
    ("  alice\n", 1, "continuation line with nothing to continue"),
])
def test_errors_name_the_line_and_the_fix(text: str, line: int, fix: str) -> None:
    with pytest.raises(AliasesError) as caught:
        parse_aliases(text, "/etc/fastmta/aliases")
    message = str(caught.value)
    assert message.startswith(f"/etc/fastmta/aliases:{line}: ")
    assert fix in message


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text(GOOD, encoding="utf-8")
    assert load_aliases(path)["postmaster"] == ("root",)
    with pytest.raises(AliasesError, match="no such file"):
        load_aliases(tmp_path / "missing")
    path.write_bytes(b"root: \xff\n")
    with pytest.raises(AliasesError, match="not valid UTF-8"):
        load_aliases(path)
