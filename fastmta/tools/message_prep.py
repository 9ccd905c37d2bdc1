"""A message from `fastmta sendmail`'s standard input, made ready to send.

`read_message` reads it as /usr/sbin/sendmail does: to the end of input, or, unless
`ignore_dots` (-i, -oi), to a line holding a single "." (which is not part of it).
`prepare_message` then:
- turns every line end into CRLF (RFC 5322 2.1) and ends the message with one;
- drops a leading mbox "From " line (not a header field; sendmail and Postfix drop it);
- with `extract` (-t), takes recipients from To, Cc and Bcc, or from Resent-To, Resent-Cc
  and Resent-Bcc when the message has any (a resent message, RFC 5322 3.6.6), added to
  those given as arguments (as Postfix does);
- removes Bcc and Resent-Bcc, so no recipient sees who was copied blind (RFC 5322 3.6.3);
- adds From (from -F and the envelope sender), Date and Message-ID when missing
  (RFC 5322 3.6: From and Date are required, Message-ID is expected), and a Received
  field saying who submitted it ("from userid N", as Postfix's pickup writes);
- qualifies a bare name ("root") with our hostname, and checks every address with the
  SMTP path grammar (RFC 5321 4.1.2), DSN options too (RFC 3461), before anything is sent.
A header section that a line without a colon interrupts ends there: that line starts the
body, after an empty line we insert.

Nothing here does I/O but `read_message`; errors are `MessageError` with the sysexits
status to exit with and a message that says what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import BinaryIO

from fastmta.protocol.address import PathError, parse_mail_argument, parse_rcpt_argument

__all__ = ["MessageError", "PreparedMessage", "Recipient", "prepare_message", "read_message",
           "xtext"]

_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")  # RFC 5322 2.2 field name, then ":"
_MAX_DSN_ENVID = 100  # RFC 3461 4.4


class MessageError(Exception):
    """The input or the options cannot make a message; `status` is the sysexits code."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass(frozen=True)
class Recipient:
    """An envelope recipient with its RCPT parameters (NOTIFY); what SMTPPool accepts."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedMessage:
    content: bytes  # CRLF line ends, ready for DATA (dot-stuffing is the client's)
    sender: str  # "" for the null reverse path
    recipients: tuple[Recipient, ...]
    mail_params: dict[str, str | None]
    added: tuple[str, ...]  # header fields we added, by name


def read_message(stream: BinaryIO, *, ignore_dots: bool, limit: int) -> bytes:
    """The message on `stream`; MessageError (EX_DATAERR) once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size, at_line_start = 0, True
    while True:
        chunk = stream.readline(1 << 16)
        if not chunk:
            break
        if (not ignore_dots and at_line_start
                and chunk in (b".\n", b".\r\n", b".")):  # "." then end of input counts too
            break
        size += len(chunk)
        if size > limit:
            raise MessageError(os.EX_DATAERR, f"the message is larger than max_message_size "
                               f"({limit} bytes); send a smaller one or raise the setting")
        chunks.append(chunk)
        at_line_start = chunk.endswith(b"\n")
    return b"".join(chunks)


def prepare_message(raw: bytes, *, sender: str | None, full_name: str | None,
                    recipients: Sequence[str], extract: bool, hostname: str, login: str,
                    uid: int, notify: str | None = None, ret: str | None = None,
                    envid: str | None = None) -> PreparedMessage:
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if lines and lines[0].startswith(b"From ") and _FIELD.match(lines[0]) is None:
        lines.pop(0)  # an mbox separator, not "From :" (obsolete spacing, RFC 5322 4.5)
    fields, body = _split_header(lines)
    names = {name for name, _ in fields}

    envelope_sender = _envelope_sender(sender, hostname, login)
    addresses = _addresses(recipients, hostname, os.EX_USAGE)
    if extract:
        found = _addresses(_extract_recipients(fields), hostname, os.EX_DATAERR)
        addresses += [address for address in found if address not in addresses]
    if not addresses:
        raise MessageError(os.EX_USAGE, "no recipients found in the To, Cc and Bcc header "
                           "fields, nor as arguments; add one" if extract else
                           "no recipients: name them as arguments, or use -t to read them "
                           "from the To, Cc and Bcc header fields")
    rcpt_params = _checked_rcpt_params(addresses, notify)
    mail_params = _checked_mail_params(envelope_sender, ret, envid)

    header = [f"Received: by {hostname} (fastmta sendmail, from userid {uid});".encode(),
              f"\t{formatdate(localtime=True)}".encode()]
    header += [line for name, field_lines in fields if name not in (b"bcc", b"resent-bcc")
               for line in field_lines]
    added: list[str] = []
    if b"from" not in names:
        author = envelope_sender or f"{login}@{hostname}"
        header.append(b"From: " + _mailbox_text(full_name, author).encode("utf-8"))
        added.append("From")
    if b"date" not in names:
        header.append(b"Date: " + formatdate(localtime=True).encode("ascii"))
        added.append("Date")
    if b"message-id" not in names:
        header.append(b"Message-ID: " + make_msgid(domain=hostname).encode("ascii"))
        added.append("Message-ID")
    content = b"\r\n".join(header + [b""] + body) + b"\r\n"
    return PreparedMessage(content, envelope_sender,
                           tuple(Recipient(a, p) for a, p in zip(addresses, rcpt_params)),
                           mail_params, tuple(added))


def xtext(text: str) -> str:
    """RFC 3461 4 xtext: "+" "=" and anything outside "!".."~" as +XX."""
    return "".join(ch if "!" <= ch <= "~" and ch not in "+=" else
                   "".join(f"+{byte:02X}" for byte in ch.encode("utf-8")) for ch in text)


# --- the header section ---------------------------------------------------------------


def _split_header(lines: list[bytes]) -> tuple[list[tuple[bytes, list[bytes]]], list[bytes]]:
    """([(lower-case name, its lines)], body lines); see the module docstring."""
    fields: list[tuple[bytes, list[bytes]]] = []
    for index, line in enumerate(lines):
        text = line.rstrip(b"\r")
        if not text:
            return fields, lines[index + 1:]
        if text[:1] in (b" ", b"\t") and fields:
            fields[-1][1].append(line)
            continue
        match = _FIELD.match(text)
        if match is None:
            return fields, lines[index:]  # not a header field: the body starts here
        fields.append((match.group(1).lower(), [line]))
    return fields, []


def _field_value(lines: list[bytes]) -> str:
    value = b" ".join(line.strip() for line in lines).split(b":", 1)[1]
    return value.decode("utf-8", "replace")


def _extract_recipients(fields: list[tuple[bytes, list[bytes]]]) -> list[str]:
    resent = [lines for name, lines in fields if name in (b"resent-to", b"resent-cc",
                                                          b"resent-bcc")]
    chosen = resent or [lines for name, lines in fields if name in (b"to", b"cc", b"bcc")]
    return [address for _, address in getaddresses([_field_value(lines) for lines in chosen])
            if address]


# --- addresses ------------------------------------------------------------------------


def _qualify(address: str, hostname: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address if "@" in address or not address else f"{address}@{hostname}"


def _envelope_sender(sender: str | None, hostname: str, login: str) -> str:
    if sender is None:
        return f"{login}@{hostname}"
    address = _qualify(sender, hostname)
    if address:
        try:
            parse_mail_argument(f"<{address}>")
        except PathError as exc:
            raise MessageError(os.EX_USAGE, f"-f {sender!r} is not a valid sender address "
                               f"({exc.reply.text}); give user@domain, or <> for none") from None
    return address


def _addresses(items: Sequence[str], hostname: str, status: int) -> list[str]:
    """Qualified, checked, without duplicates; `status`: EX_USAGE for arguments,
    EX_DATAERR for addresses found in the message."""
    addresses: list[str] = []
    for item in items:
        if item.startswith("-"):
            raise MessageError(status, f"{item!r} came after the first recipient, so it would "
                               "be taken as an address; put options before recipients")
        address = _qualify(item, hostname)
        try:
            parse_rcpt_argument(f"<{address}>")
        except PathError:
            where = "" if status == os.EX_USAGE else " (in the message's header)"
            raise MessageError(status, f"{item!r}{where} is not a valid recipient address; "
                               "give user@domain") from None
        if address not in addresses:
            addresses.append(address)
    return addresses


def _mailbox_text(name: str | None, address: str) -> str:
    """`"Name" <address>` with the name RFC 2047-encoded when it is not ASCII."""
    try:
        return formataddr((name or "", address), charset="utf-8")
    except UnicodeEncodeError:  # a UTF-8 address (RFC 6532) stays as it is
        if not name:
            return address
        shown = formataddr((name, "x@x"), charset="utf-8")  # 'name <x@x>'
        return f"{shown[:-len('x@x>')]}{address}>"


def _checked_rcpt_params(addresses: list[str], notify: str | None) -> list[dict[str, str | None]]:
    if notify is None:
        return [{} for _ in addresses]
    try:
        return [parse_rcpt_argument(f"<{a}> NOTIFY={notify}")[1] for a in addresses]
    except PathError:
        raise MessageError(os.EX_USAGE, f"-N {notify!r}: give never, or a comma-separated "
                           "list of success, failure and delay (RFC 3461 4.1)") from None


def _checked_mail_params(sender: str, ret: str | None, envid: str | None) -> dict[str, str | None]:
    params = []
    if ret is not None:
        params.append(f"RET={ret}")
    if envid is not None:
        encoded = xtext(envid)
        if len(encoded) > _MAX_DSN_ENVID:
            raise MessageError(os.EX_USAGE, f"-V: the envelope id may be at most "
                               f"{_MAX_DSN_ENVID} characters once encoded (RFC 3461 4.4)")
        params.append(f"ENVID={encoded}")
    if not params:
        return {}
    try:
        return parse_mail_argument(f"<{sender}> {' '.join(params)}")[1]
    except PathError:
        raise MessageError(os.EX_USAGE, f"-R {ret!r}: give full or hdrs (RFC 3461 4.3)"
                           ) from None
