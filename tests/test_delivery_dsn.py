"""RFC 3464 DSNs as a mail client sees them: parsed back with the stdlib email package."""

from __future__ import annotations

import email
import email.policy
import email.utils
from datetime import UTC, datetime
from email.message import EmailMessage, Message

import pytest

from fastmta.delivery.dsn import (
    AttemptError,
    DSNRecipient,
    ReportedMessage,
    bounce_envelope,
    build_dsn,
    notify_wants,
    read_header_block,
    xtext_decode,
    xtext_encode,
)

NOW = 1_800_000_000.0
ORIGINAL = (b"Received: from client.example.org by mx.test; Fri, 15 Jan 2027 08:00:00 +0000\r\n"
            b"Message-ID: <m1@example.org>\r\nSubject: caf\xc3\xa9\r\nFrom: alice@example.org\r\n"
            b"\r\nBody line\r\n.leading dot\r\n")
HEADERS = read_header_block([ORIGINAL[:20], ORIGINAL[20:]])
MESSAGE = ReportedMessage("1K1CMPPNACAA72M00HZM", NOW - 60, "alice@example.org",
                          {"ENVID": "env+2Bid", "RET": "HDRS"}, "client.example.org")


def parse(dsn: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(dsn, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def status_blocks(report: EmailMessage) -> list[Message]:
    part = report.get_payload()[1]
    assert part.get_content_type() in ("message/delivery-status", "message/global-delivery-status")
    return part.get_payload()


def words(part: Message) -> str:
    """The text of a part with line breaks and runs of blanks as single spaces."""
    return " ".join(part.get_content().split())


def failed(address: str, stored: str, remote: str | None = None, **params: str) -> DSNRecipient:
    error = AttemptError.parse(stored, remote)
    return DSNRecipient(address, params, "failed", error.status, error, NOW - 5)


def test_a_failure_report_has_the_three_parts_and_every_field() -> None:
    dsn = build_dsn(reporting_mta="mx.test", message=MESSAGE, header_block=HEADERS, now=NOW,
                    recipients=[failed("bob@example.com", "550 5.1.1 User unknown",
                                       "mx1.example.com[127.0.0.2]:25",
                                       ORCPT="rfc822;Bob+2B1@example.com")])
    assert b"\r\n" in dsn and b"\n" not in dsn.replace(b"\r\n", b"")
    report = parse(dsn)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"].addresses[0].addr_spec == "alice@example.org"
    assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mx.test>"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["In-Reply-To"] == "<m1@example.org>"
    text, _status, original = report.get_payload()
    assert text.get_content_type() == "text/plain"
    body = words(text)
    assert "<bob@example.com>:" in body
    assert "host mx1.example.com[127.0.0.2]:25 said: 550 5.1.1 User unknown" in body
    assert "permanent" in body
    per_message, per_recipient = status_blocks(report)
    assert per_message["Reporting-MTA"] == "dns; mx.test"
    assert per_message["Original-Envelope-Id"] == "env+id"
    assert per_message["Arrival-Date"] == email.utils.format_datetime(
        datetime.fromtimestamp(NOW - 60, UTC))
    assert per_recipient["Final-Recipient"] == "rfc822; bob@example.com"
    assert per_recipient["Original-Recipient"] == "rfc822; Bob+1@example.com"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx1.example.com"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 User unknown"
    assert per_recipient["Last-Attempt-Date"]
    assert original.get_content_type() == "text/rfc822-headers"
    assert original.get_payload(decode=True) == HEADERS


def test_our_own_findings_have_no_remote_mta() -> None:
    dsn = build_dsn(reporting_mta="mx.test", message=MESSAGE, header_block=HEADERS, now=NOW,
                    recipients=[failed("carol@nowhere.test",
                                       "5.1.2 domain nowhere.test does not exist (NXDOMAIN)")])
    _, block = status_blocks(parse(dsn))
    assert block["Status"] == "5.1.2"
    assert block["Remote-MTA"] is None
    assert block["Diagnostic-Code"] == "x-fastmta; domain nowhere.test does not exist (NXDOMAIN)"


def test_ret_full_returns_the_message_byte_for_byte() -> None:
    dsn = build_dsn(reporting_mta="mx.test", message=MESSAGE, header_block=HEADERS, now=NOW,
                    content=ORIGINAL, recipients=[failed("bob@example.com", "550 5.1.1 no")])
    report = parse(dsn)
    original = report.get_payload()[2]
    assert original.get_content_type() == "message/rfc822"
    assert ORIGINAL in dsn
    assert "A copy of your message" in words(report.get_payload()[0])


def test_a_delay_warning_says_delayed_and_until_when() -> None:
    error = AttemptError.parse("451 4.7.1 Greylisted", "mx[127.0.0.2]:25")
    dsn = build_dsn(reporting_mta="mx.test", message=MESSAGE, header_block=HEADERS, now=NOW,
                    retry_until=NOW + 86400,
                    recipients=[DSNRecipient("bob@example.com", {}, "delayed", error.status, error)])
    report = parse(dsn)
    assert report["Subject"].startswith("Delayed Mail")
    _, block = status_blocks(report)
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.7.1"
    assert block["Will-Retry-Until"]
    assert "you do not need to send" in words(report.get_payload()[0])
    assert report.get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_utf8_addresses_use_the_global_report_type() -> None:
    sender_message = ReportedMessage("1K1CMPPNACAA72M00HZM", NOW, "j\u00f6rg@example.org", {})
    dsn = build_dsn(reporting_mta="mx.test", message=sender_message, header_block=HEADERS,
                    now=NOW, recipients=[failed("b\u00f6b@example.com", "550 5.1.1 unknown")])
    report = parse(dsn)
    assert report.get_param("report-type") == "global-delivery-status"
    status = report.get_payload()[1]
    assert status.get_content_type() == "message/global-delivery-status"
    # The stdlib parser does not split global status blocks (RFC 6533); read the bytes.
    assert "\r\nFinal-Recipient: utf-8; b\u00f6b@example.com\r\nAction: failed\r\n".encode() in dsn
    envelope = bounce_envelope("j\u00f6rg@example.org", "mx.test", dsn)
    assert envelope.sender == "" and "SMTPUTF8" in envelope.mail_params
    assert [r.address for r in envelope.recipients] == ["j\u00f6rg@example.org"]


def test_failed_and_delayed_recipients_are_never_mixed() -> None:
    error = AttemptError.parse("451 4.7.1 later")
    with pytest.raises(ValueError, match="separate"):
        build_dsn(reporting_mta="mx.test", message=MESSAGE, header_block=HEADERS, now=NOW,
                  recipients=[failed("a@b.c", "550 5.1.1 x"),
                              DSNRecipient("b@b.c", {}, "delayed", "4.7.1", error)])


@pytest.mark.parametrize(("notify", "failure", "delay"), [
    (None, True, True), ("NEVER", False, False), ("FAILURE", True, False),
    ("DELAY", False, True), ("SUCCESS,FAILURE,DELAY", True, True), ("success", False, False),
])
def test_notify_decides_which_reports_a_recipient_gets(notify: str | None, failure: bool,
                                                       delay: bool) -> None:
    params = {} if notify is None else {"NOTIFY": notify}
    assert notify_wants(params, "failure") is failure
    assert notify_wants(params, "delay") is delay


def test_attempt_errors_round_trip_through_their_stored_form() -> None:
    remote = AttemptError("5.1.1", "User\n unknown", 550, "mx[192.0.2.1]:25")
    assert remote.encode() == "550 5.1.1 User unknown"
    assert AttemptError.parse(remote.encode(), remote.remote) == AttemptError(
        "5.1.1", "User unknown", 550, "mx[192.0.2.1]:25")
    ours = AttemptError("4.4.1", "connect to mx[192.0.2.1]:25: Connection refused")
    assert AttemptError.parse(ours.encode()) == ours
    assert AttemptError.parse("something else").status == "4.0.0"
    assert AttemptError("5.0.0", "x", 550, "[192.0.2.1]:25").remote_name() == "192.0.2.1"


def test_xtext_round_trips() -> None:
    for text in ("plain@example.com", "a+b=c@example.com", "sp ace", "caf\u00e9"):
        encoded = xtext_encode(text)
        assert encoded.isascii() and " " not in encoded and "=" not in encoded
        if text.isascii():
            assert xtext_decode(encoded) == text


def test_the_header_block_stops_at_the_empty_line_and_at_its_limit() -> None:
    assert read_header_block([b"A: 1\r\n\r", b"\nbody\r\n\r\n"]) == b"A: 1\r\n"
    assert read_header_block([b"A: 1\r\nno end"]) == b"A: 1\r\nno end"
    assert read_header_block([b"A" * 100, b"B" * 100], limit=150) == b"A" * 100 + b"B" * 50
