"""DataReader: message content out of the wire form of DATA, on both kernel backends.

Written-out edge cases (end marker split across feeds, dot-unstuffing, every SMTP
smuggling variant), then properties: results do not depend on chunking, match a
plain reference model, and the compiled reader agrees with its twin per feed.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta import kernels

MARKER = b"\r\n.\r\n"


# The `backend` fixture is a stateless namespace, so reusing it across examples is
# safe; no deadline because CI machines are shared and timing varies.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_all(backend, chunks, max_line: int = 1000, normalise: bool = False):
    """Feed chunks until the end of data; return content, rest, done and the counters."""
    reader = backend.DataReader(max_line, normalise)
    content = []
    unread = []
    for chunk in chunks:
        if reader.done:
            unread.append(chunk)
        else:
            content.append(reader.feed(chunk))
    rest = reader.take_rest() + b"".join(unread)
    counters = (reader.size, reader.long_lines, reader.bare_lf, reader.bare_cr)
    return b"".join(content), rest, reader.done, counters


def reference_read(data: bytes, max_line: int, normalise: bool):
    """RFC 5321 4.5.2 on the whole input at once, written the obvious way."""
    wire = b"\r\n" + data  # the message starts at a line start
    end = wire.find(MARKER)
    done = end >= 0
    wire_content, rest = (wire[: end + 2], wire[end + 5 :]) if done else (wire, b"")
    if not done:  # a possible start of the marker is still held back
        for partial in (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r"):
            if wire_content.endswith(partial):
                wire_content = wire_content[: -len(partial)]
                break
    lines = re.split(b"(?<=\n)", wire_content[2:])
    long_lines = sum(1 for line in lines if line.endswith(b"\n") and len(line) > max_line)
    bare_lf = len(re.findall(b"(?<!\r)\n", wire_content))
    bare_cr = len(re.findall(b"\r(?!\n)", wire_content))
    content = wire_content.replace(b"\r\n.", b"\r\n")[2:]
    if normalise:
        content = re.sub(b"\r\n|\r|\n", b"\r\n", content)
    return content, rest, done, (len(content), long_lines, bare_lf, bare_cr)


def test_data_that_is_only_the_marker_is_an_empty_message(backend):
    assert read_all(backend, [b".\r\n"]) == (b"", b"", True, (0, 0, 0, 0))


def test_empty_feeds_return_nothing(backend):
    reader = backend.DataReader()
    assert reader.feed(b"") == b""
    assert not reader.done
    assert reader.size == 0


def test_message_ends_with_its_last_crlf_and_keeps_pipelined_commands(backend):
    wire = b"Subject: hi\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
    content, rest, done, counters = read_all(backend, [wire])
    assert content == b"Subject: hi\r\n\r\nbody\r\n"
    assert rest == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
    assert done and counters == (len(content), 0, 0, 0)


def test_take_rest_gives_the_rest_once(backend):
    reader = backend.DataReader()
    reader.feed(b"x\r\n.\r\nQUIT\r\n")
    assert reader.take_rest() == b"QUIT\r\n"
    assert reader.take_rest() == b""


def test_leading_dot_is_removed_once_after_a_real_line_end(backend):
    wire = b"..hidden\r\n...\r\n. space\r\nmid.dot\r\n.\r\n"
    content, _, _, _ = read_all(backend, [wire])
    assert content == b".hidden\r\n..\r\n space\r\nmid.dot\r\n"


def test_leading_dot_of_the_first_line_is_removed(backend):
    assert read_all(backend, [b".x\r\n.\r\n"])[0] == b"x\r\n"
    assert read_all(backend, [b"..\r\n.\r\n"])[0] == b".\r\n"


@pytest.mark.parametrize("cut", range(1, len(MARKER)))
def test_marker_split_between_feeds_still_ends_the_data(backend, cut):
    wire = b"line one\r\nline two" + MARKER + b"QUIT\r\n"
    at = wire.index(MARKER) + cut
    reader = backend.DataReader()
    first = reader.feed(wire[:at])
    assert not reader.done
    second = reader.feed(wire[at:])
    assert reader.done
    assert first + second == b"line one\r\nline two\r\n"
    assert reader.take_rest() == b"QUIT\r\n"


def test_chunk_ending_in_crlf_dot_then_a_stuffed_line(backend):
    reader = backend.DataReader()
    out = reader.feed(b"a\r\n.")
    out += reader.feed(b".b\r\n.")
    assert not reader.done
    out += reader.feed(b"\r\n")
    assert reader.done
    assert out == b"a\r\n.b\r\n"


def test_at_most_four_bytes_are_held_between_feeds(backend):
    reader = backend.DataReader()
    assert reader.feed(b"abc\r\n.\r") == b"abc"
    assert reader.feed(b"x") == b"\r\n\rx"  # ".\r" + "x" was a dot-stuffed line, bare CR


# Each variant would end the data for a reader that accepts a lone CR or LF as a
# line end; here none of them does (SMTP smuggling, CVE-2023-51764 and friends).
SMUGGLING = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.LF": b"\r.\n",
    "LF.CR": b"\n.\r",
    "CRLF.CR": b"\r\n.\r",
    "CR.CRLF": b"\r.\r\n",
    "CRCRLF.CRLF-lookalike": b"\r\r\n.\r\r\n",
}


@pytest.mark.parametrize("variant", SMUGGLING.values(), ids=SMUGGLING.keys())
@pytest.mark.parametrize("normalise", [False, True])
def test_smuggled_end_of_data_is_content(backend, variant, normalise):
    smuggled = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    wire = b"Subject: innocent\r\n\r\nhello" + variant + smuggled + b"more" + MARKER + b"QUIT\r\n"
    content, rest, done, (size, _, bare_lf, bare_cr) = read_all(
        backend, [wire], normalise=normalise
    )
    assert done
    assert rest == b"QUIT\r\n"
    assert smuggled in content  # still inside the message, never seen as commands
    assert content.endswith(b"more\r\n")
    assert bare_lf + bare_cr > 0
    assert size == len(content)
    if normalise:
        assert re.search(b"\r(?!\n)|(?<!\r)\n", content) is None


@pytest.mark.parametrize("variant", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_variant_split_at_every_point_never_ends_the_data(backend, variant):
    wire = b"hello" + variant + b"QUIT\r\n"
    for cut in range(len(wire) + 1):
        _, rest, done, _ = read_all(backend, [wire[:cut], wire[cut:]])
        assert not done, cut
        assert rest == b""


def test_crlf_dot_lf_drops_the_stuffing_dot_but_does_not_end(backend):
    content, _, done, (_, _, bare_lf, bare_cr) = read_all(backend, [b"a\r\n.\nb" + MARKER])
    assert done
    assert content == b"a\r\n\nb\r\n"
    assert (bare_lf, bare_cr) == (1, 0)


def test_bare_line_ends_are_counted_and_kept_unless_normalised(backend):
    wire = b"a\nb\rc\r\r\nd\r\n.\r\n"
    kept = b"a\nb\rc\r\r\nd\r\n"
    assert read_all(backend, [wire]) == (kept, b"", True, (len(kept), 0, 1, 2))
    normalised = b"a\r\nb\r\nc\r\n\r\nd\r\n"
    assert read_all(backend, [wire], normalise=True) == (
        normalised,
        b"",
        True,
        (len(normalised), 0, 1, 2),
    )


def test_lone_lf_never_starts_a_stuffed_line(backend):
    content, _, _, _ = read_all(backend, [b"a\n..b\r\n.\r\n"], normalise=True)
    assert content == b"a\r\n..b\r\n"


@pytest.mark.parametrize("max_line", [1000, 10])
def test_line_of_exactly_max_line_is_not_long_and_one_more_is(backend, max_line):
    exact = b"x" * (max_line - 2) + b"\r\n"
    over = b"y" * (max_line - 1) + b"\r\n"
    stuffed_over = b"." + b"z" * (max_line - 2) + b"\r\n"  # the stuffing dot is on the wire
    _, _, _, counters = read_all(backend, [exact + exact + MARKER[2:]], max_line)
    assert counters[1] == 0
    _, _, _, counters = read_all(backend, [exact + over + stuffed_over + MARKER[2:]], max_line)
    assert counters[1] == 2


def test_long_line_count_survives_tiny_feeds(backend):
    # 32 octets (long), 7, then 13 ended by a bare LF (long), then 3.
    wire = b"a" * 30 + b"\r\n" + b"b" * 5 + b"\r\n" + b"c" * 12 + b"\n" + b"d\r\n" + b".\r\n"
    whole = read_all(backend, [wire], max_line=12)
    assert whole[2] and whole[3][1] == 2
    assert read_all(backend, [wire[i : i + 1] for i in range(len(wire))], max_line=12) == whole


def test_nul_and_eight_bit_bytes_pass_unchanged(backend):
    body = b"caf\xc3\xa9 \0 " + bytes(range(128, 256)) + b"\r\n"
    content, _, done, counters = read_all(backend, [body + b".\r\n"])
    assert done and content == body and counters[0] == len(body)


def test_very_long_unbroken_line_comes_out_in_large_pieces(backend):
    reader = backend.DataReader()
    chunk = b"Q" * (1 << 20)
    pieces = [reader.feed(chunk) for _ in range(4)]
    assert [len(piece) for piece in pieces] == [1 << 20] * 4
    assert reader.feed(MARKER) == b"\r\n"
    assert reader.long_lines == 1 and reader.size == 4 * (1 << 20) + 2


def test_feed_after_done_and_bad_arguments_are_refused(backend):
    reader = backend.DataReader()
    reader.feed(b".\r\n")
    with pytest.raises(ValueError, match="take_rest"):
        reader.feed(b"x")
    with pytest.raises(ValueError):
        backend.DataReader(max_line=1)
    with pytest.raises(TypeError):
        backend.DataReader().feed("text\r\n.\r\n")  # type: ignore[arg-type]
    assert backend.DataReader().feed(memoryview(b"a\r\n.\r\n")) == b"a\r\n"
    assert backend.DataReader().feed(bytearray(b"b\r\n.\r\n")) == b"b\r\n"


TRANSACTION = (
    b"From: a@example.org\r\n"
    b"\r\n"
    b"..starts with a dot\r\n"
    b"bare\nlf and bare\rcr\r\n"
    b".\n"
    b"." + b"w" * 20 + b"\r\n"
    b"last\r\n"
    b".\r\n"
    b"QUIT\r\n"
)


def test_every_split_point_of_a_transaction_gives_the_same_result(backend):
    for normalise in (False, True):
        whole = read_all(backend, [TRANSACTION], max_line=16, normalise=normalise)
        assert whole[2] and whole[1] == b"QUIT\r\n"
        for cut in range(len(TRANSACTION) + 1):
            pieces = [TRANSACTION[:cut], TRANSACTION[cut:]]
            assert read_all(backend, pieces, 16, normalise) == whole, cut
        for a in range(0, len(TRANSACTION), 7):
            for b in range(a, len(TRANSACTION), 5):
                pieces = [TRANSACTION[:a], TRANSACTION[a:b], TRANSACTION[b:]]
                assert read_all(backend, pieces, 16, normalise) == whole, (a, b)


data_bytes = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"a", b"\0", b"\xe9"]),
    max_size=40,
).map(b"".join) | st.binary(max_size=120)


@st.composite
def chunked(draw):
    data = draw(data_bytes)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(PROPERTY, max_examples=300)
@given(chunked(), st.integers(2, 12), st.booleans())
def test_reading_does_not_depend_on_chunking_and_matches_the_reference(
    backend, case, max_line, normalise
):
    data, chunks = case
    whole = read_all(backend, [data], max_line, normalise)
    assert read_all(backend, chunks, max_line, normalise) == whole
    assert whole == reference_read(data, max_line, normalise)


@settings(PROPERTY, max_examples=200)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"a", b"\r\n", b"\r\n\r"]), max_size=40))
def test_without_dots_only_a_marker_prefix_is_held(backend, pieces):
    reader = backend.DataReader()
    fed = returned = 0
    for piece in pieces:
        returned += len(reader.feed(piece))
        fed += len(piece)
        assert 0 <= fed - returned <= 4


@settings(PROPERTY, max_examples=300)
@given(chunked(), st.integers(2, 12), st.booleans())
def test_compiled_and_pure_readers_agree_feed_by_feed(case, max_line, normalise):
    _, chunks = case
    observed = []
    for name in ("cython", "python"):
        reader = kernels.load_backend(name).DataReader(max_line, normalise)
        steps = []
        for chunk in chunks:
            if reader.done:
                break
            out = reader.feed(chunk)
            counters = (reader.size, reader.long_lines, reader.bare_lf, reader.bare_cr)
            steps.append((out, reader.done, counters))
        steps.append(reader.take_rest())
        observed.append(steps)
    assert observed[0] == observed[1]
