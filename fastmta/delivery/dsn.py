"""Delivery status notifications (RFC 3464), and how attempt errors are recorded for them.

A DSN is a multipart/report (RFC 6522) with three parts: a human-readable text/plain; a
message/delivery-status with the per-message fields (Reporting-MTA, Arrival-Date, ENVID)
and one block per recipient (Final-Recipient, Original-Recipient from ORCPT, Action,
Status, Remote-MTA, Diagnostic-Code with the remote reply, dates); then the original
message's headers (text/rfc822-headers) or, for RET=FULL and a message that is not too
big, the whole message (message/rfc822), byte for byte.  Built with the stdlib `email`
package: DSNs are rare and never on the receive path.

Rules (RFC 3461 4.1-4.3, RFC 5321 4.5.5, 6.1):
- A DSN goes to the envelope sender with the null reverse path, so it never causes another.
  A message from the null sender gets no DSN at all (`should_notify` says no).
- NOTIFY=NEVER: no DSN for that recipient; NOTIFY without FAILURE (or DELAY): no failure
  (or delay) DSN.  Without NOTIFY, failures are reported and so are delays (our choice,
  which the RFC leaves to the MTA).  A delay warning uses Action: delayed and never
  carries the message content.
- Addresses that are not ASCII use the "utf-8" address type and message/global-delivery-
  status (RFC 6533); the DSN is then queued with SMTPUTF8.

Attempt errors: the queue manager records each transient or permanent failure in the
spool as one line that this module can read back, `AttemptError.encode()`:
"550 5.1.1 User unknown" when a remote server answered (code, RFC 3463 status, text) or
"4.4.1 connect to mx[192.0.2.1]:25: Connection refused" for our own findings; the host
that answered is stored beside it (the spool's `remote`).
"""

from __future__ import annotations

import email.utils
import io
import re
import secrets
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import Message, MIMEPart

from fastmta.spool import Envelope, Recipient

__all__ = [
    "AttemptError",
    "DSNRecipient",
    "ReportedMessage",
    "bounce_envelope",
    "build_dsn",
    "notify_wants",
    "read_header_block",
    "return_full_content",
    "should_notify",
    "xtext_decode",
    "xtext_encode",
]

_ERROR = re.compile(r"(?:(?P<code>[2-5]\d\d) )?(?P<status>[245]\.\d{1,3}\.\d{1,3})(?: (?P<text>.*))?",
                    re.DOTALL)
_HOST_LABEL = re.compile(r"(?P<name>[^\[\]]*)\[(?P<ip>[^\]]*)\](?::\d+)?")
HEADER_LIMIT = 256 * 1024  # original headers kept in a DSN at most (the rest is cut)


@dataclass(frozen=True)
class AttemptError:
    """Why one delivery attempt of one recipient did not succeed."""

    status: str  # RFC 3463 enhanced status, e.g. "5.1.1"
    text: str
    code: int | None = None  # the remote server's reply code, when one answered
    remote: str | None = None  # "name[ip]:port" of the server that answered, or was tried

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")

    def encode(self) -> str:
        """The one-line form stored in the spool (and shown by `fastmta queue`)."""
        text = " ".join(self.text.split())
        prefix = f"{self.code} {self.status}" if self.code is not None else self.status
        return f"{prefix} {text}" if text else prefix

    @classmethod
    def parse(cls, stored: str | None, remote: str | None = None) -> AttemptError:
        """Read back what `encode` wrote; anything else becomes a generic 4.0.0/5.0.0."""
        match = _ERROR.fullmatch((stored or "").strip())
        if match is None:
            return cls("4.0.0", stored or "no details were recorded", None, remote)
        code = int(match.group("code")) if match.group("code") else None
        return cls(match.group("status"), match.group("text") or "", code, remote)

    def describe(self) -> str:
        """For people: "host mx[192.0.2.1]:25 said: 550 5.1.1 User unknown"."""
        if self.code is not None and self.remote:
            return f"host {self.remote} said: {self.code} {self.status} {' '.join(self.text.split())}"
        return " ".join(self.text.split())

    def remote_name(self) -> str | None:
        """The Remote-MTA name: the host name of the label, else its address."""
        if not self.remote:
            return None
        match = _HOST_LABEL.fullmatch(self.remote)
        if match is None:
            return self.remote
        return match.group("name") or match.group("ip")


@dataclass(frozen=True)
class DSNRecipient:
    """One recipient block of a DSN."""

    address: str
    params: Mapping[str, str | None]  # its RCPT parameters (ORCPT, NOTIFY)
    action: str  # "failed" or "delayed"
    status: str  # RFC 3463; usually error.status, 4.4.7 when the message expired
    error: AttemptError  # the last error: Remote-MTA and Diagnostic-Code come from it
    last_attempt: float | None = None
    note: str | None = None  # for people, instead of error.describe() (e.g. "gave up after...")


@dataclass(frozen=True)
class ReportedMessage:
    """What the DSN reports on: the original message's envelope facts."""

    queue_id: str
    arrival: float
    sender: str
    mail_params: Mapping[str, str | None]
    helo: str = ""


def should_notify(sender: str) -> bool:
    """No DSN ever goes to the null reverse path (RFC 5321 4.5.5): no bounce loops."""
    return sender != ""


def notify_wants(params: Mapping[str, str | None], kind: str) -> bool:
    """Whether the recipient's NOTIFY asks for a `kind` ("failure", "delay") DSN."""
    notify = params.get("NOTIFY")
    if notify is None:
        return kind in ("failure", "delay")
    values = {value.strip().upper() for value in notify.split(",")}
    return "NEVER" not in values and kind.upper() in values


def return_full_content(mail_params: Mapping[str, str | None]) -> bool:
    """RET=FULL asks for the whole message in a failure DSN; the default is headers."""
    return (mail_params.get("RET") or "").upper() == "FULL"


def xtext_decode(text: str) -> str:
    """RFC 3461 4 xtext: "+2B" -> "+" (ENVID and ORCPT are sent encoded)."""
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    """RFC 3461 4: "+", "=", controls, space and non-ASCII become "+XX" (of the UTF-8 bytes)."""
    return "".join(char if "!" <= char <= "~" and char not in "+=" else
                   "".join(f"+{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
                   for char in text)


def read_header_block(chunks: Iterable[bytes], limit: int = HEADER_LIMIT) -> bytes:
    """The message's header section (up to the empty line), at most `limit` bytes."""
    taken = bytearray()
    for chunk in chunks:
        start = max(0, len(taken) - 3)
        taken += chunk
        end = taken.find(b"\r\n\r\n", start)
        if end >= 0:
            return bytes(taken[:min(end + 2, limit)])
        if len(taken) >= limit:
            break
    return bytes(taken[:limit])


def build_dsn(*, reporting_mta: str, message: ReportedMessage, recipients: Sequence[DSNRecipient],
              header_block: bytes, content: bytes | None = None, now: float,
              retry_until: float | None = None) -> bytes:
    """The DSN as bytes with CRLF line ends, ready for `Spool.enqueue`.

    Every recipient must have the same action.  `content`: the whole original message
    for RET=FULL (None: headers only).  `retry_until`: for delay warnings, the give-up
    time (Will-Retry-Until)."""
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    delayed = recipients[0].action == "delayed"
    if any((r.action == "delayed") != delayed for r in recipients):
        raise ValueError("failed and delayed recipients go in separate DSNs")
    utf8 = not all(_ascii(r.address) for r in recipients) or not _ascii(message.sender)
    policy = email_policy.SMTPUTF8 if utf8 else email_policy.SMTP
    report = MIMEPart(policy=policy)
    kind = "global-delivery-status" if utf8 else "delivery-status"
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = f"<{message.sender}>"
    report["Subject"] = ("Delayed Mail (still being retried)" if delayed
                         else "Undelivered Mail Returned to Sender")
    report["Date"] = email.utils.format_datetime(_utc(now))
    report["Message-ID"] = f"<{message.queue_id}.{secrets.token_hex(6)}@{reporting_mta}>"
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834 5
    original_id = _header_value(header_block, b"message-id")
    if original_id:
        report["In-Reply-To"] = original_id
        report["References"] = original_id
    report["MIME-Version"] = "1.0"
    report.set_type("multipart/report")
    report.set_param("report-type", kind)

    text = MIMEPart(policy=policy)
    text.set_content(_human_text(reporting_mta, message, recipients, delayed, retry_until,
                                 content is not None))
    report.attach(text)

    status = MIMEPart(policy=policy)
    status.set_type(f"message/{kind}")
    del status["MIME-Version"]
    blocks: list[Message | str] = [_per_message_fields(reporting_mta, message, policy)]
    blocks += [_recipient_fields(r, policy, retry_until) for r in recipients]
    status.set_payload(blocks)
    report.attach(status)

    if content is not None:
        original = MIMEPart(policy=policy)
        original.set_type("message/global" if utf8 and not _ascii(content) else "message/rfc822")
        del original["MIME-Version"]
        original.set_payload(content.decode("ascii", "surrogateescape"))  # written back as is
    else:
        original = MIMEPart(policy=policy)
        original.set_type("text/rfc822-headers")
        del original["MIME-Version"]
        if not _ascii(header_block):
            original["Content-Transfer-Encoding"] = "8bit"
        original.set_payload(header_block.decode("ascii", "surrogateescape"))
    report.attach(original)
    out = io.BytesIO()
    _DSNGenerator(out, policy=policy).flatten(report)
    return out.getvalue()


class _DSNGenerator(BytesGenerator):
    """The stdlib generator, taught the two things a DSN needs that it lacks: the RFC 6533
    global status part is written like message/delivery-status, and a message/* part
    whose payload is the raw original (bytes decoded with surrogateescape) is written back
    byte for byte instead of being re-parsed and re-folded."""

    def _handle_message_global_delivery_status(self, msg: Message) -> None:
        self._handle_message_delivery_status(msg)  # type: ignore[attr-defined]

    def _handle_message(self, msg: Message) -> None:
        payload = msg._payload  # type: ignore[attr-defined]  # get_payload() would mangle bytes
        if isinstance(payload, str):
            self.write(payload)
        else:
            super()._handle_message(msg)  # type: ignore[misc]


def bounce_envelope(sender: str, reporting_mta: str, dsn: bytes) -> Envelope:
    """The envelope that queues a DSN: null sender, to the original sender."""
    params: dict[str, str | None] = {}
    if not _ascii(dsn):
        params["BODY"] = "8BITMIME"
    if not _ascii(sender):
        params["SMTPUTF8"] = None
    return Envelope(sender="", recipients=[Recipient(sender, {})], mail_params=params,
                    client_address="", helo=reporting_mta, protocol="LOCAL")


# --- the parts ---------------------------------------------------------------------------


def _human_text(reporting_mta: str, message: ReportedMessage, recipients: Sequence[DSNRecipient],
                delayed: bool, retry_until: float | None, full: bool) -> str:
    arrived = email.utils.format_datetime(_utc(message.arrival))
    if delayed:
        until = (f" until {email.utils.format_datetime(_utc(retry_until))}"
                 if retry_until is not None else "")
        summary = (f"Your message of {arrived} has not been delivered yet to the recipients "
                   f"listed below. Delivery will be retried{until}; you do not need to send "
                   "it again. You will get another notice only if it finally fails.")
    else:
        attached = "A copy of your message is" if full else "The headers of your message are"
        summary = (f"Your message of {arrived} could not be delivered to the recipients "
                   "listed below. This is a permanent failure: delivery will not be retried. "
                   f"The reason for each recipient follows. {attached} attached.")
    lines = [f"This is the mail system at {reporting_mta}.", "", *textwrap.wrap(summary, 72), ""]
    for rcpt in recipients:
        lines.append(f"<{rcpt.address}>:")
        lines += textwrap.wrap(rcpt.note or rcpt.error.describe(), 72, initial_indent="    ",
                               subsequent_indent="    ", break_long_words=False,
                               break_on_hyphens=False)
        lines.append("")
    lines.append(f"(Queue id {message.queue_id}.)")
    return "\n".join(lines) + "\n"


def _per_message_fields(reporting_mta: str, message: ReportedMessage, policy: email_policy.Policy
                        ) -> Message:
    block = Message(policy=policy)
    envid = message.mail_params.get("ENVID")
    if envid:
        block["Original-Envelope-Id"] = xtext_decode(envid)
    block["Reporting-MTA"] = f"dns; {reporting_mta}"
    if message.helo:
        block["Received-From-MTA"] = f"dns; {message.helo}"
    block["Arrival-Date"] = email.utils.format_datetime(_utc(message.arrival))
    block["X-Fastmta-Queue-ID"] = message.queue_id  # an extension field (RFC 3464 2.4)
    return block


def _recipient_fields(rcpt: DSNRecipient, policy: email_policy.Policy,
                      retry_until: float | None) -> Message:
    block = Message(policy=policy)
    orcpt = rcpt.params.get("ORCPT")
    if orcpt and ";" in orcpt:
        kind, _, value = orcpt.partition(";")
        block["Original-Recipient"] = f"{kind.strip().lower()}; {xtext_decode(value.strip())}"
    block["Final-Recipient"] = f"{'rfc822' if _ascii(rcpt.address) else 'utf-8'}; {rcpt.address}"
    block["Action"] = rcpt.action
    block["Status"] = rcpt.status
    remote_name = rcpt.error.remote_name()
    if remote_name and rcpt.error.code is not None:
        block["Remote-MTA"] = f"dns; {remote_name}"
        block["Diagnostic-Code"] = (f"smtp; {rcpt.error.code} {rcpt.error.status} "
                                    f"{' '.join(rcpt.error.text.split())}")
    elif rcpt.error.text:
        block["Diagnostic-Code"] = f"x-fastmta; {' '.join(rcpt.error.text.split())}"
    if rcpt.last_attempt is not None:
        block["Last-Attempt-Date"] = email.utils.format_datetime(_utc(rcpt.last_attempt))
    if rcpt.action == "delayed" and retry_until is not None:
        block["Will-Retry-Until"] = email.utils.format_datetime(_utc(retry_until))
    return block


def _header_value(header_block: bytes, name: bytes) -> str | None:
    for line in _unfolded(header_block):
        field, colon, value = line.partition(b":")
        if colon and field.strip().lower() == name:
            text = value.strip().decode("ascii", "replace")
            return text if re.fullmatch(r"<[^<>\s]+>", text) else None
    return None


def _unfolded(header_block: bytes) -> Iterator[bytes]:
    current = b""
    for line in header_block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and current:
            current += b" " + line.strip()
            continue
        if current:
            yield current
        current = line
    if current:
        yield current


def _utc(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


def _ascii(value: str | bytes) -> bool:
    return value.isascii()
