"""The MAIL/RCPT fast paths of protocol/server.py give what address.py's parser gives.

The server takes the common forms ("FROM:<local@domain> SIZE=n BODY=x", "TO:<local@domain>")
without the general parser; for every argument a fast path accepts, the general parser
must accept it too and return the same address and parameters, in the same order.
Arguments are built from pieces of the grammar, valid and invalid, so both the accepted
forms and their near misses (quoting, literals, long domains, odd spacing, duplicates,
non-ASCII) are tried.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta.protocol.address import parse_mail_argument, parse_rcpt_argument
from fastmta.protocol.server import _simple_mail, _simple_rcpt

PIECES = [
    b"FROM:", b"from:", b"TO:", b"to:", b"<", b">", b"<>", b"@", b".", b"..", b"a", b"Z", b"0",
    b"-", b"_", b"+", b"!", b"'", b"=", b'"', b"\\", b"[", b"]", b"192.0.2.1", b"IPv6:", b" ",
    b"  ", b"\t", b",", b":", b"SIZE=", b"size=", b"BODY=", b"body=", b"7BIT", b"8bitmime",
    b"BINARYMIME", b"SMTPUTF8", b"NOTIFY=NEVER", b"1152", b"00", b"9" * 21, b"x" * 60,
    b"example.com", b"postmaster", b"\xc3\xa9", b"\xff", b"@relay:", b"-x", b"x-",
]
ARGUMENTS = st.lists(st.sampled_from(PIECES), max_size=14).map(b"".join)


def general_mail(arg: bytes) -> tuple[str, dict[str, str | None]]:
    assert arg[:5].upper() == b"FROM:"
    return parse_mail_argument(arg[5:].decode("utf-8"))


def general_rcpt(arg: bytes) -> tuple[str, dict[str, str | None]]:
    assert arg[:3].upper() == b"TO:"
    return parse_rcpt_argument(arg[3:].decode("utf-8"))


@settings(max_examples=1500, deadline=None)
@given(ARGUMENTS)
def test_fast_mail_agrees_with_the_general_parser(arg: bytes) -> None:
    fast = _simple_mail(arg)
    if fast is not None:
        address, params = general_mail(arg)
        assert fast == (address, params)
        assert list(fast[1]) == list(params)  # the order the envelope stores them in


@settings(max_examples=1500, deadline=None)
@given(ARGUMENTS)
def test_fast_rcpt_agrees_with_the_general_parser(arg: bytes) -> None:
    fast = _simple_rcpt(arg)
    if fast is not None:
        assert (fast, {}) == general_rcpt(arg)


@pytest.mark.parametrize(("arg", "expected"), [
    (b"FROM:<a@example.com>", ("a@example.com", {})),
    (b"FROM:<first.last+tag@mail.example.org> SIZE=01152",
     ("first.last+tag@mail.example.org", {"SIZE": "1152"})),
    (b"from:<a@b.example> body=8bitmime SIZE=10", ("a@b.example", {"BODY": "8BITMIME", "SIZE": "10"})),
])
def test_the_common_mail_forms_take_the_fast_path(arg: bytes, expected: tuple) -> None:
    assert _simple_mail(arg) == expected == general_mail(arg)


@pytest.mark.parametrize("arg", [
    b"FROM:<>", b"FROM: <a@example.com>", b"FROM:<a@example.com>  SIZE=1",
    b"FROM:<a@example.com> SIZE=1 SIZE=2", b"FROM:<a@example.com> RET=FULL",
    b'FROM:<"quoted"@example.com>', b"FROM:<a@[192.0.2.1]>", b"FROM:<a@" + b"x" * 64 + b">",
    b"FROM:<\xc3\xa9@example.com> SMTPUTF8", b"FROM:a@example.com", b"FROM:<@relay:a@example.com>",
])
def test_everything_else_goes_to_the_general_parser(arg: bytes) -> None:
    assert _simple_mail(arg) is None


@pytest.mark.parametrize(("arg", "fast"), [
    (b"TO:<user@example.test>", "user@example.test"),
    (b"to:<u.ser-1@sub.example.test>", "u.ser-1@sub.example.test"),
    (b"TO:<postmaster>", None),
    (b"TO:<user@example.test> NOTIFY=NEVER", None),
    (b"TO: <user@example.test>", None),
])
def test_rcpt_fast_path_cases(arg: bytes, fast: str | None) -> None:
    assert _simple_rcpt(arg) == fast
    if fast is not None:
        assert general_rcpt(arg) == (fast, {})
