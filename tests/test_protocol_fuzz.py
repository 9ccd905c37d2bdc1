"""Property tests: whatever bytes arrive, in whatever packets, the server never raises,
answers with well-formed replies, keeps its memory bounded, and replies the same way
however the stream is split."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_server import SETTINGS, Driver

from fastmta.protocol.server import PARAMETER_LINE_ALLOWANCE

LINE_LIMIT = SETTINGS.max_command_line + PARAMETER_LINE_ALLOWANCE
NO_TLS = dataclasses.replace(SETTINGS, tls_available=False)

FRAGMENTS = [
    b"EHLO c.example\r\n", b"HELO c\r\n", b"MAIL FROM:<a@example.net>\r\n", b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@example.net> BODY=BINARYMIME SIZE=100\r\n", b"RCPT TO:<alice@example.com>\r\n",
    b"RCPT TO:<x@elsewhere.example>\r\n", b"RCPT TO:<postmaster>\r\n", b"DATA\r\n", b".\r\n",
    b"\r\n.\r\n", b"..x\r\n", b"Received: x\r\n", b"BDAT 5\r\n", b"BDAT 3 LAST\r\n", b"BDAT 0 LAST\r\n",
    b"BDAT 70000\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"VRFY a\r\n", b"STARTTLS\r\n", b"\n",
    b"\r", b"\x00", b"x" * 600, b"hello world\r\n", b"\xff\xfe", b"MAIL FROM:<\xc3\xa9@x.y> SMTPUTF8\r\n",
]
fragment_streams = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=40)),
                            max_size=40).map(b"".join)

MAILS = [b"MAIL FROM:<a@example.net>\r\n", b"MAIL FROM:<> BODY=8BITMIME\r\n",
         b"MAIL FROM:<a@example.net> BODY=BINARYMIME\r\n", b"MAIL FROM:<a@example.net> SIZE=99999\r\n"]
RCPTS = [b"RCPT TO:<alice@example.com>\r\n", b"RCPT TO:<bob@example.com> NOTIFY=NEVER\r\n",
         b"RCPT TO:<nobody@example.com>\r\n", b"RCPT TO:<x@elsewhere.example>\r\n"]
BODY_PIECES = [b"Received: x\r\n" * 26, b"Subject: s\r\n", b"\r\n", b"text\r\n", b"..dot\r\n",
               b".\r\n", b"\n.\r\n", b"\r", b"\n", b"y" * 1500, b"\x00\xff"]
NOISE = [b"", b"", b"", b"NOOP\r\n", b"RSET\r\n", b"QUIT\r\n", b"BAD\r\n", b"\n", b"x" * 700]


@st.composite
def session_streams(draw: st.DrawFn) -> bytes:
    """Plausible sessions: greetings, envelopes, DATA or BDAT bodies, noise in between."""
    parts = [draw(st.sampled_from([b"EHLO c.example\r\n", b"HELO c\r\n", b""]))]
    for _ in range(draw(st.integers(0, 4))):
        parts.append(draw(st.sampled_from(MAILS)))
        parts += draw(st.lists(st.sampled_from(RCPTS), max_size=3))
        body = b"".join(draw(st.lists(st.sampled_from(BODY_PIECES), max_size=8)))
        kind = draw(st.sampled_from(["data", "bdat", "none"]))
        if kind == "data":
            parts += [b"DATA\r\n", body, draw(st.sampled_from([b"\r\n.\r\n", b".\r\n", b""]))]
        elif kind == "bdat":
            sizes = draw(st.lists(st.integers(0, len(body)), max_size=3))
            start = 0
            for end in sorted(sizes):
                parts += [b"BDAT %d\r\n" % (end - start), body[start:end]]
                start = end
            parts += [b"BDAT %d LAST\r\n" % (len(body) - start), body[start:]]
        parts.append(draw(st.sampled_from(NOISE)))
    return b"".join(parts)


streams = st.one_of(fragment_streams, session_streams())


def packets_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def feed_checked(driver: Driver, packets: list[bytes]) -> None:
    for packet in packets:
        driver.feed(packet)
        conn = driver.conn
        # bounded memory: at most one partial command line is held, nothing else
        assert conn.input_buffered <= LINE_LIMIT
        assert not conn._inbox and len(driver.conn._out) == 0
    driver.replies()  # every reply line well formed, multiline replies terminated


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_never_break_the_server(data: bytes, cuts: list[int]) -> None:
    driver = Driver()
    feed_checked(driver, [b"EHLO c.example\r\n", *packets_of(data, cuts)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams, st.lists(st.integers(min_value=0), max_size=8))
def test_command_soup_never_breaks_the_server(data: bytes, cuts: list[int]) -> None:
    driver = Driver()
    feed_checked(driver, packets_of(data, cuts))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams, st.lists(st.integers(min_value=0), max_size=8))
def test_replies_do_not_depend_on_packet_boundaries(data: bytes, cuts: list[int]) -> None:
    whole = Driver(settings=NO_TLS)
    whole.feed(data)
    split = Driver(settings=NO_TLS)
    feed_checked(split, packets_of(data, cuts))
    assert split.wire == whole.wire
    assert split.messages == whole.messages
    assert split.event_kinds() == whole.event_kinds()
