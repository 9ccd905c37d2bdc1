"""Path and ESMTP parameter parsing (RFC 5321 4.1.2, RFC 6531, RFC 1870, RFC 3030, RFC 3461)."""

from __future__ import annotations

import pytest

from fastmta.protocol.address import (
    PathError,
    parse_mail_argument,
    parse_mailbox,
    parse_rcpt_argument,
    split_mailbox,
    unquote_local_part,
)

MAIL_OK = [
    ("<user@example.com>", "user@example.com", {}),
    ("<>", "", {}),
    (" <user@example.com>", "user@example.com", {}),  # the common "MAIL FROM: <...>"
    ("user@example.com", "user@example.com", {}),  # no brackets, as many MTAs accept
    ("<first.last+tag@sub.example.co.uk>", "first.last+tag@sub.example.co.uk", {}),
    ('<"john doe"@example.com>', '"john doe"@example.com', {}),
    ('<"a>b\\"c"@example.com>', '"a>b\\"c"@example.com', {}),
    ("<user@[192.0.2.1]>", "user@[192.0.2.1]", {}),
    ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]", {}),
    ("<@relay1.example,@relay2.example:user@example.com>", "user@example.com", {}),
    ("<jörg@bücher.example> SMTPUTF8", "jörg@bücher.example", {"SMTPUTF8": None}),
    ("<u@example.com> size=1000 body=8bitmime", "u@example.com", {"SIZE": "1000", "BODY": "8BITMIME"}),
    ("<u@example.com> BODY=BINARYMIME", "u@example.com", {"BODY": "BINARYMIME"}),
    ("<u@example.com>  SIZE=0   RET=hdrs ENVID=QQ+2B1", "u@example.com",
     {"SIZE": "0", "RET": "HDRS", "ENVID": "QQ+2B1"}),
    ("<> SIZE=10", "", {"SIZE": "10"}),
]


@pytest.mark.parametrize(("text", "address", "params"), MAIL_OK)
def test_mail_arguments_accepted(text: str, address: str, params: dict[str, str | None]) -> None:
    assert parse_mail_argument(text) == (address, params)


MAIL_BAD = [
    ("", "501 5.1.7"),
    ("<user@example.com", "501 5.1.7"),
    ("<user@example.com>x", "501 5.1.7"),
    ("<user>", "501 5.1.7"),  # only RCPT may omit the domain, and only for postmaster
    ("<user@>", "501 5.1.7"),
    ("<@example.com>", "501 5.1.7"),
    ("<us er@example.com>", "501 5.1.7"),
    ("<user..x@example.com>", "501 5.1.7"),
    ("<user@-example.com>", "501 5.1.7"),
    ("<user@example..com>", "501 5.1.7"),
    ("<user@[192.0.2.300]>", "501 5.1.7"),
    ("<user@[IPv6:zz::1]>", "501 5.1.7"),
    ("<user@[tag:whatever]>", "501 5.1.7"),
    ("<user@" + "a" * 64 + ".example>", "501 5.1.7"),  # a DNS label is at most 63 octets
    ("<user@" + ".".join(["abcdefgh"] * 30) + ">", "501 5.1.7"),  # domain over 255 octets
    ('<"unterminated@example.com>', "501 5.1.7"),
    ("<u@example.com> FOO=bar", "555 5.5.4"),
    ("<u@example.com> NOTIFY=NEVER", "555 5.5.4"),  # an RCPT parameter on MAIL
    ("<u@example.com> SIZE=", "501 5.5.4"),
    ("<u@example.com> SIZE=-1", "501 5.5.4"),
    ("<u@example.com> SIZE=" + "9" * 21, "501 5.5.4"),
    ("<u@example.com> BODY=9BIT", "501 5.5.4"),
    ("<u@example.com> SMTPUTF8=yes", "501 5.5.4"),
    ("<u@example.com> SIZE=1 size=2", "501 5.5.4"),
    ("<u@example.com> RET=ALL", "501 5.5.4"),
    ("<u@example.com> ENVID=" + "x" * 101, "501 5.5.4"),
    ("<u@example.com> ENVID=a+zz", "501 5.5.4"),
    ("<u@example.com> -BAD=1", "501 5.5.4"),
]


@pytest.mark.parametrize(("text", "reply"), MAIL_BAD)
def test_mail_arguments_refused(text: str, reply: str) -> None:
    with pytest.raises(PathError) as caught:
        parse_mail_argument(text)
    assert str(caught.value.reply).startswith(reply)


RCPT_OK = [
    ("<postmaster>", "postmaster", {}),
    ("<PostMaster>", "PostMaster", {}),
    ("<postmaster@example.com>", "postmaster@example.com", {}),
    ("<u@example.com> NOTIFY=never", "u@example.com", {"NOTIFY": "NEVER"}),
    ("<u@example.com> NOTIFY=success,Delay", "u@example.com", {"NOTIFY": "SUCCESS,DELAY"}),
    ("<u@example.com> ORCPT=rfc822;u+40x@example.com", "u@example.com",
     {"ORCPT": "rfc822;u+40x@example.com"}),
    ("<u@example.com> ORCPT=utf-8;j\\x{00F6}rg@example.com", "u@example.com",
     {"ORCPT": "utf-8;j\\x{00F6}rg@example.com"}),
]


@pytest.mark.parametrize(("text", "address", "params"), RCPT_OK)
def test_rcpt_arguments_accepted(text: str, address: str, params: dict[str, str | None]) -> None:
    assert parse_rcpt_argument(text) == (address, params)


RCPT_BAD = [
    ("<>", "501 5.1.3"),
    ("<postmaster", "501 5.1.3"),
    ("<abuse>", "501 5.1.3"),
    ("<u@example.com> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
    ("<u@example.com> NOTIFY=SUCCESS,SUCCESS", "501 5.5.4"),
    ("<u@example.com> NOTIFY=SOMETIMES", "501 5.5.4"),
    ("<u@example.com> ORCPT=nosemicolon", "501 5.5.4"),
    ("<u@example.com> SIZE=10", "555 5.5.4"),  # a MAIL parameter on RCPT
]


@pytest.mark.parametrize(("text", "reply"), RCPT_BAD)
def test_rcpt_arguments_refused(text: str, reply: str) -> None:
    with pytest.raises(PathError) as caught:
        parse_rcpt_argument(text)
    assert str(caught.value.reply).startswith(reply)


def test_mailbox_helpers() -> None:
    assert parse_mailbox("a@example.com") == "a@example.com"
    assert parse_mailbox("<a@example.com>") is None
    assert split_mailbox('"x@y"@example.com') == ('"x@y"', "example.com")
    assert split_mailbox("postmaster") == ("postmaster", "")
    assert unquote_local_part('"john\\"s \\\\ box"') == 'john"s \\ box'
    assert unquote_local_part("plain") == "plain"


def test_pathological_input_is_parsed_quickly() -> None:
    # Regex backtracking must stay linear-ish: these finish at once or the test times out.
    for text in ["<" + "a." * 250 + "@", "<" + "a" * 500 + "@" + "b-" * 250, "<" + '"' + "\\" * 500,
                 "<@" + "a," * 250 + "x@y>"]:
        with pytest.raises(PathError):
            parse_mail_argument(text)
