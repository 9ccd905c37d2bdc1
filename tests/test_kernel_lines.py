"""LineSplitter: command lines out of a byte stream, on both kernel backends.

Written-out edge cases first, then properties: the lines do not depend on how the
stream is cut into feeds, they match a plain reference model, and the compiled
splitter agrees with its pure-Python twin byte for byte.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta import kernels

COMMAND_LIMIT = 512  # RFC 5321 4.5.3.1.4
# The flag values are part of the API (docs/architecture.md), so they are spelled out.
OK, TOO_LONG, BARE_LF, BARE_CR, NUL = 0, 1, 2, 4, 8


# The `backend` fixture is a stateless namespace, so reusing it across examples is
# safe; no deadline because CI machines are shared and timing varies.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def drain(splitter) -> list[tuple[bytes, int]]:
    lines = []
    while (item := splitter.next_line()) is not None:
        lines.append(item)
    return lines


def split_all(backend, chunks, limit: int = COMMAND_LIMIT) -> tuple[list[tuple[bytes, int]], bytes]:
    splitter = backend.LineSplitter(limit)
    lines = []
    for chunk in chunks:
        splitter.feed(chunk)
        lines += drain(splitter)
    return lines, splitter.take_rest()


def reference_split(data: bytes, limit: int) -> tuple[list[tuple[bytes, int]], bytes]:
    """What the docstring promises, computed the obvious way on the whole input."""
    *complete, partial = data.split(b"\n")
    lines = []
    for line in complete:
        if len(line) + 1 > limit:
            lines.append((line[:limit], TOO_LONG))
            continue
        flags = OK
        if line.endswith(b"\r"):
            line = line[:-1]
        else:
            flags |= BARE_LF
        if b"\r" in line:
            flags |= BARE_CR
        if b"\0" in line:
            flags |= NUL
        lines.append((line, flags))
    # A partial line already known to be too long has been dropped, not kept.
    return lines, partial if len(partial) < limit else b""


def test_flag_values_are_the_documented_bits(backend):
    flags = (backend.LINE_OK, backend.LINE_TOO_LONG, backend.LINE_BARE_LF, backend.LINE_BARE_CR)
    assert (*flags, backend.LINE_NUL) == (OK, TOO_LONG, BARE_LF, BARE_CR, NUL)


def test_empty_input_gives_no_line(backend):
    splitter = backend.LineSplitter()
    splitter.feed(b"")
    assert splitter.next_line() is None
    assert splitter.buffered == 0
    assert splitter.take_rest() == b""


def test_lines_come_out_without_crlf_and_partial_tail_is_kept(backend):
    splitter = backend.LineSplitter()
    splitter.feed(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO")
    assert drain(splitter) == [
        (b"EHLO client.example", backend.LINE_OK),
        (b"MAIL FROM:<a@b.example>", backend.LINE_OK),
    ]
    assert splitter.buffered == len(b"RCPT TO")
    splitter.feed(b":<c@d.example>\r\n")
    assert drain(splitter) == [(b"RCPT TO:<c@d.example>", backend.LINE_OK)]
    assert splitter.buffered == 0


def test_empty_line_is_a_line(backend):
    lines, rest = split_all(backend, [b"\r\n\r\n"])
    assert lines == [(b"", backend.LINE_OK), (b"", backend.LINE_OK)]
    assert rest == b""


@pytest.mark.parametrize("limit", [COMMAND_LIMIT, 2, 3, 80])
def test_line_of_exactly_the_limit_is_accepted(backend, limit):
    text = b"A" * (limit - 2)
    lines, _ = split_all(backend, [text + b"\r\n" + text + b"\r\n"], limit)
    assert lines == [(text, backend.LINE_OK), (text, backend.LINE_OK)]


@pytest.mark.parametrize("limit", [COMMAND_LIMIT, 2, 3, 80])
def test_line_one_octet_over_the_limit_is_reported_truncated(backend, limit):
    text = b"A" * (limit - 1)
    lines, _ = split_all(backend, [text + b"\r\n\r\n"], limit)
    # The first `limit` octets of the wire line, so the last one may be its CR.
    assert lines == [((text + b"\r")[:limit], backend.LINE_TOO_LONG), (b"", backend.LINE_OK)]


def test_too_long_line_is_reported_once_when_its_end_arrives(backend):
    splitter = backend.LineSplitter(16)
    splitter.feed(b"X" * 40)
    assert splitter.next_line() is None  # not ended yet: nothing to answer
    splitter.feed(b"Y" * 40)
    assert splitter.next_line() is None
    splitter.feed(b"Z\r\nQUIT\r\n")
    assert drain(splitter) == [(b"X" * 16, backend.LINE_TOO_LONG), (b"QUIT", backend.LINE_OK)]


def test_bare_lf_ends_a_line_and_is_flagged(backend):
    lines, _ = split_all(backend, [b"NOOP\n\nQUIT\r\n"])
    assert lines == [
        (b"NOOP", backend.LINE_BARE_LF),
        (b"", backend.LINE_BARE_LF),
        (b"QUIT", backend.LINE_OK),
    ]


def test_bare_cr_does_not_end_a_line_and_is_flagged(backend):
    lines, _ = split_all(backend, [b"NO\rOP\r\nQUIT\r\r\n\r"])
    assert lines == [(b"NO\rOP", backend.LINE_BARE_CR), (b"QUIT\r", backend.LINE_BARE_CR)]


def test_flags_combine(backend):
    lines, _ = split_all(backend, [b"A\rB\0C\n"])
    assert lines == [(b"A\rB\0C", backend.LINE_BARE_LF | backend.LINE_BARE_CR | backend.LINE_NUL)]


def test_nul_byte_is_kept_and_flagged(backend):
    lines, _ = split_all(backend, [b"MAIL FROM:<a\0b@example.org>\r\n"])
    assert lines == [(b"MAIL FROM:<a\0b@example.org>", backend.LINE_NUL)]


def test_eight_bit_bytes_pass_unchanged(backend):
    line = b"MAIL FROM:<j\xc3\xb6rg@b\xfccher.example> SMTPUTF8" + bytes(range(128, 256))
    lines, _ = split_all(backend, [line + b"\r\n"])
    assert lines == [(line, backend.LINE_OK)]


def test_take_rest_hands_back_what_follows_starttls(backend):
    splitter = backend.LineSplitter()
    tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\r\0"
    splitter.feed(b"STARTTLS\r\n" + tls_hello)
    assert splitter.next_line() == (b"STARTTLS", backend.LINE_OK)
    assert splitter.take_rest() == tls_hello
    assert splitter.buffered == 0
    assert splitter.next_line() is None


def test_take_rest_during_a_too_long_line_starts_afresh(backend):
    splitter = backend.LineSplitter(8)
    splitter.feed(b"0123456789abc")
    assert splitter.next_line() is None
    assert splitter.take_rest() == b""  # the over-long line was already dropped
    splitter.feed(b"NOOP\r\n")
    assert drain(splitter) == [(b"NOOP", backend.LINE_OK)]


def test_ten_megabyte_line_without_lf_is_not_buffered(backend):
    splitter = backend.LineSplitter()
    chunk = b"A" * 65536
    for _ in range(10 * 1024 * 1024 // len(chunk)):
        splitter.feed(chunk)
        assert splitter.next_line() is None
        assert splitter.buffered <= splitter.limit
    splitter.feed(b"\r\nQUIT\r\n")
    assert drain(splitter) == [(b"A" * 512, backend.LINE_TOO_LONG), (b"QUIT", backend.LINE_OK)]


def test_ten_megabyte_line_in_one_feed_is_dropped_once_drained(backend):
    splitter = backend.LineSplitter()
    splitter.feed(b"B" * (10 * 1024 * 1024))
    assert splitter.next_line() is None
    assert splitter.buffered <= splitter.limit


def test_invalid_limit_and_input_types_are_refused(backend):
    with pytest.raises(ValueError):
        backend.LineSplitter(1)
    splitter = backend.LineSplitter()
    with pytest.raises(TypeError):
        splitter.feed("NOOP\r\n")  # type: ignore[arg-type]
    splitter.feed(bytearray(b"NO"))
    splitter.feed(memoryview(b"OP\r\n"))
    assert drain(splitter) == [(b"NOOP", backend.LINE_OK)]


SESSION = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<alice@example.org> SIZE=1234\r\n"
    b"RCPT TO:<bob@example.net>\r\n"
    b"NOOP\n"
    b"RSET\r\r\n"
    b"DATA\r\n"
    b"partial"
)


def test_every_split_point_of_a_session_gives_the_same_lines(backend):
    whole = split_all(backend, [SESSION], limit=32)
    assert len(whole[0]) == 6
    for cut in range(len(SESSION) + 1):
        assert split_all(backend, [SESSION[:cut], SESSION[cut:]], limit=32) == whole, cut
    for cut in range(0, len(SESSION), 3):
        pieces = [SESSION[i : i + 1] for i in range(cut)] + [SESSION[cut:]]
        assert split_all(backend, pieces, limit=32) == whole, cut


smtp_bytes = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\0", b"A", b"BCD", b"\xff", b" "]), max_size=60
).map(b"".join) | st.binary(max_size=200)


@st.composite
def chunked(draw, data_strategy=smtp_bytes):
    data = draw(data_strategy)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(PROPERTY, max_examples=300)
@given(chunked(), st.integers(2, 12))
def test_lines_do_not_depend_on_chunking_and_match_the_reference(backend, case, limit):
    data, chunks = case
    assert split_all(backend, chunks, limit) == split_all(backend, [data], limit)
    assert split_all(backend, [data], limit) == reference_split(data, limit)


@settings(PROPERTY, max_examples=300)
@given(chunked(), st.integers(2, 12))
def test_compiled_and_pure_splitters_agree_step_by_step(case, limit):
    _, chunks = case
    observed = []
    for name in ("cython", "python"):
        splitter = kernels.load_backend(name).LineSplitter(limit)
        steps = []
        for chunk in chunks:
            splitter.feed(chunk)
            steps.append((splitter.buffered, drain(splitter), splitter.buffered))
        steps.append(splitter.take_rest())
        observed.append(steps)
    assert observed[0] == observed[1]
