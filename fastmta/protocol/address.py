"""Parsing of MAIL/RCPT arguments: paths (RFC 5321 4.1.2, RFC 6531) and ESMTP parameters.

`parse_mail_argument` and `parse_rcpt_argument` take the text after "FROM:" /
"TO:" and return (address, params) or raise `PathError` carrying the reply to
send.  Addresses are returned exactly as the client wrote them, without the
angle brackets and without a source route; "" is the null reverse path.

Accepted forms: `<>` (MAIL only), `<local@domain>`, quoted local parts,
domain literals `[192.0.2.1]` and `[IPv6:2001:db8::1]`, source routes
`<@relay,@relay2:local@domain>` (accepted and ignored, RFC 5321 C),
`<postmaster>` without a domain (RCPT only, RFC 5321 4.1.1.3), UTF-8 local
parts and U-label domains (RFC 6531; the caller checks SMTPUTF8 was given),
and, as most MTAs do, a bare `local@domain` without angle brackets.

Parameters: keyword names are case-insensitive and stored upper-cased; a
keyword without "=value" maps to None; unknown keywords raise a 555, bad values
and duplicates a 501 (RFC 5321 4.1.2, RFC 1870, RFC 6152, RFC 3030, RFC 6531,
RFC 3461).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from fastmta.protocol import replies
from fastmta.protocol.replies import Reply

__all__ = [
    "DSN_PARAMETERS",
    "PathError",
    "parse_mail_argument",
    "parse_mailbox",
    "parse_rcpt_argument",
    "split_mailbox",
    "unquote_local_part",
]


class PathError(ValueError):
    """A MAIL/RCPT argument was refused; `reply` says why, in SMTP terms."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


# RFC 5321 4.1.2 grammar, widened by RFC 6531 3.3 to UTF-8 in atext, qtext and labels.
_UTF8 = "\u0080-\U0010ffff"
_ATOM = f"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\\-{_UTF8}]+"
_DOT_STRING = f"{_ATOM}(?:\\.{_ATOM})*"
_QUOTED = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{_UTF8}]|\\\\[\\x20-\\x7e])*"'
_LABEL = f"[A-Za-z0-9{_UTF8}](?:[A-Za-z0-9{_UTF8}\\-]*[A-Za-z0-9{_UTF8}])?"
_DOMAIN = f"{_LABEL}(?:\\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"  # dcontent, checked further in _check_literal
_MAILBOX = f"(?:{_DOT_STRING}|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})"
_ROUTE = f"@{_DOMAIN}(?:,@{_DOMAIN})*:"

_PATH_RE = re.compile(f"<(?:{_ROUTE})?({_MAILBOX})>")
_MAILBOX_RE = re.compile(_MAILBOX)
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE_RE = re.compile(f"[\\x21-\\x3c\\x3e-\\x7e{_UTF8}]+")  # esmtp-value: no "=", SP, CTLs
_XTEXT_RE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*")  # RFC 3461 4
_ORCPT_RE = re.compile(f"[A-Za-z0-9\\-]+;[\\x21-\\x7e{_UTF8}]+")  # addr-type ";" xtext (RFC 6533)
_SIZE_DIGITS = 20  # RFC 1870 size-value: 1*20DIGIT

DSN_PARAMETERS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def parse_mail_argument(text: str) -> tuple[str, dict[str, str | None]]:
    """(reverse path, params) from the text after "MAIL FROM:"."""
    text = text.lstrip(" ")
    if text.startswith("<>"):
        address, rest = "", text[2:]
    else:
        address, rest = _parse_path(text, replies.BAD_SENDER_SYNTAX)
    return address, _parse_params(rest, _MAIL_CHECKS)


def parse_rcpt_argument(text: str) -> tuple[str, dict[str, str | None]]:
    """(forward path, params) from the text after "RCPT TO:"."""
    text = text.lstrip(" ")
    if text[:12].lower() == "<postmaster>":  # RFC 5321 4.1.1.3: no domain needed
        address, rest = text[1:11], text[12:]
    else:
        address, rest = _parse_path(text, replies.BAD_RECIPIENT_SYNTAX)
    return address, _parse_params(rest, _RCPT_CHECKS)


def parse_mailbox(text: str) -> str | None:
    """`text` if it is a valid mailbox (local@domain, no brackets), else None."""
    if _MAILBOX_RE.fullmatch(text) is None or not _domain_ok(text):
        return None
    return text


def split_mailbox(address: str) -> tuple[str, str]:
    """(local part, domain) of a validated mailbox; ("postmaster", "") for bare postmaster.

    The domain never contains "@", so the last "@" separates them even when a
    quoted local part holds one.
    """
    local, _, domain = address.rpartition("@")
    if not local:
        return domain, ""
    return local, domain


def unquote_local_part(local: str) -> str:
    """The local part without quoting: "\\"john\\\\ doe\\"" -> "john doe"."""
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def _parse_path(text: str, bad_syntax: Reply) -> tuple[str, str]:
    """(mailbox, rest of the argument) from "<...> params" or a bare "local@domain"."""
    if text.startswith("<"):
        match = _PATH_RE.match(text)
        if match is None:
            raise PathError(bad_syntax)
        address, rest = match.group(1), text[match.end():]
    else:
        address, _, rest = text.partition(" ")
        rest = " " + rest if rest else ""
        if _MAILBOX_RE.fullmatch(address) is None:
            raise PathError(bad_syntax)
    if rest and rest[0] != " ":
        raise PathError(bad_syntax)
    if not _domain_ok(address):
        raise PathError(bad_syntax)
    return address, rest


def _domain_ok(address: str) -> bool:
    """Length limits of RFC 5321 4.5.3.1.2 / RFC 1035 2.3.4, and real IP literals."""
    domain = address.rpartition("@")[2]
    if domain[0] == "[":
        return _literal_ok(domain[1:-1])
    if len(domain) > 63:
        if len(domain.encode("utf-8")) > 255:
            return False
        if domain.isascii() and any(len(label) > 63 for label in domain.split(".")):
            return False
    return True


def _literal_ok(inner: str) -> bool:
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False  # includes General-address-literal tags we cannot route to
    return True


def _parse_params(rest: str, checks: dict[str, _Check]) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for token in rest.split():
        keyword, equals, value = token.partition("=")
        name = keyword.upper()
        check = checks.get(name)
        if check is None:
            if _KEYWORD_RE.fullmatch(keyword) is None:
                raise PathError(replies.BAD_PARAMETER)
            raise PathError(replies.UNKNOWN_PARAMETER)
        if name in params:
            raise PathError(replies.BAD_PARAMETER)
        if equals and _VALUE_RE.fullmatch(value) is None:
            raise PathError(replies.BAD_PARAMETER)
        params[name] = check(value if equals else None)
    return params


# Each check takes the value (None when the keyword had no "=value") and returns
# the value to store, normalised, or raises PathError.
_Check = Callable[[str | None], str | None]


def _bad() -> PathError:
    return PathError(replies.BAD_PARAMETER)


def _check_size(value: str | None) -> str | None:
    if value is None or not value.isdigit() or not value.isascii() or len(value) > _SIZE_DIGITS:
        raise _bad()
    return str(int(value))


def _check_body(value: str | None) -> str | None:
    body = (value or "").upper()
    if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
        raise _bad()
    return body


def _check_flag(value: str | None) -> str | None:
    if value is not None:  # SMTPUTF8 takes no value (RFC 6531 3.4)
        raise _bad()
    return None


def _check_ret(value: str | None) -> str | None:
    ret = (value or "").upper()
    if ret not in ("FULL", "HDRS"):
        raise _bad()
    return ret


def _check_envid(value: str | None) -> str | None:
    if value is None or len(value) > 100 or _XTEXT_RE.fullmatch(value) is None:
        raise _bad()  # RFC 3461 4.4: xtext, at most 100 characters
    return value


def _check_notify(value: str | None) -> str | None:
    items = (value or "").upper().split(",")
    if items == ["NEVER"]:
        return "NEVER"
    if not items or len(set(items)) != len(items) or not _NOTIFY_VALUES.issuperset(items):
        raise _bad()  # RFC 3461 4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY
    return ",".join(items)


def _check_orcpt(value: str | None) -> str | None:
    if value is None or len(value) > 500 or _ORCPT_RE.fullmatch(value) is None:
        raise _bad()  # RFC 3461 4.2: addr-type ";" xtext
    addr_type, _, original = value.partition(";")
    if addr_type.lower() != "utf-8" and _XTEXT_RE.fullmatch(original) is None:
        raise _bad()
    return value


_MAIL_CHECKS: dict[str, _Check] = {
    "SIZE": _check_size,
    "BODY": _check_body,
    "SMTPUTF8": _check_flag,
    "RET": _check_ret,
    "ENVID": _check_envid,
}
_RCPT_CHECKS: dict[str, _Check] = {
    "NOTIFY": _check_notify,
    "ORCPT": _check_orcpt,
}
