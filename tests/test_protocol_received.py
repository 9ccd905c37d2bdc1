"""The Received header we write (RFC 5321 4.4) and the loop counter over message pieces."""

from __future__ import annotations

from email import message_from_bytes

from fastmta.protocol.received import ReceivedCounter, format_received

DATE = "Sun, 29 Nov 2026 10:00:00 +0000"


def test_received_header_layout() -> None:
    header = format_received("client.example.net", "192.0.2.10", "host.example.net",
                             "mx.example.com", "ESMTPS", "QID123", "alice@example.com", DATE)
    assert header == (b"Received: from client.example.net (host.example.net [192.0.2.10])\r\n"
                      b"\tby mx.example.com with ESMTPS id QID123\r\n"
                      b"\tfor <alice@example.com>; " + DATE.encode() + b"\r\n")
    parsed = message_from_bytes(header + b"\r\nbody")
    assert parsed["Received"].split(";")[-1].strip() == DATE


def test_received_header_without_recipient_or_reverse_name() -> None:
    header = format_received("helo", "2001:db8::5", None, "mx.example.com", "SMTP", "Q", None, DATE)
    assert header == (b"Received: from helo ([IPv6:2001:db8::5])\r\n"
                      b"\tby mx.example.com with SMTP id Q; " + DATE.encode() + b"\r\n")


def test_hostile_helo_cannot_break_the_header() -> None:
    header = format_received("x) by evil; Mon\tö", "192.0.2.1", None, "mx", "ESMTP", "Q", None, DATE)
    first = header.split(b"\r\n")[0]
    assert first == b"Received: from x??by?evil??Mon?? ([192.0.2.1])"
    assert header.count(b";") == 1 and header.count(b"\r\n") == 2
    assert format_received(None, "192.0.2.1", None, "mx", "SMTP", "Q", None, DATE).startswith(
        b"Received: from unknown ")


def count(pieces: list[bytes]) -> int:
    counter = ReceivedCounter()
    for piece in pieces:
        counter.feed(piece)
    return counter.count


MESSAGE = (b"Received: from a\r\n\tby b; date\r\nX-Received: no\r\nreceived: from c\r\n"
           b"RECEIVED: from d\r\nSubject: hi\r\n\r\nReceived: in the body\r\n")


def test_counts_fields_in_the_header_section_only() -> None:
    assert count([MESSAGE]) == 3
    assert count([b"\r\nReceived: x\r\n"]) == 0  # empty header section
    assert count([b"Received: x\n\nReceived: y\n"]) == 1  # LF-only content ends headers too


def test_count_is_the_same_however_the_message_is_split() -> None:
    for cut in range(len(MESSAGE)):
        assert count([MESSAGE[:cut], MESSAGE[cut:]]) == 3, cut
    assert count([MESSAGE[i:i + 1] for i in range(len(MESSAGE))]) == 3


def test_counter_holds_little_memory() -> None:
    counter = ReceivedCounter()
    for _ in range(100):
        counter.feed(b"Received: x\r\n" * 100)
    assert counter.count == 10000 and len(counter._carry) <= 9
    counter.reset()
    assert counter.count == 0 and not counter.done
