"""DotStuffer / dot_stuff: the sending side's wire form of DATA, on both kernel backends.

Written-out cases, then properties: output does not depend on chunking, it is
valid wire form (CRLF only, no line that is a lone "."), a DataReader turns it
back into the CRLF-normalised content, and both backends agree byte for byte.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta import kernels

# The `backend` fixture is a stateless namespace, so reusing it across examples is
# safe; no deadline because CI machines are shared and timing varies.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def stuff_chunks(backend, chunks) -> list[bytes]:
    stuffer = backend.DotStuffer()
    return [stuffer.feed(chunk) for chunk in chunks] + [stuffer.finish()]


def normalise_line_ends(content: bytes) -> bytes:
    return re.sub(b"\r\n|\r|\n", b"\r\n", content)


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"..", b"...\r\n.\r\n"),
        (b"\r\n.", b"\r\n..\r\n.\r\n"),
        (b"a.b\r\n.c", b"a.b\r\n..c\r\n.\r\n"),
        (b"a\nb\rc\r\nd", b"a\r\nb\r\nc\r\nd\r\n.\r\n"),
        (b"x\r\r\n", b"x\r\n\r\n.\r\n"),
        (b"\n\n", b"\r\n\r\n.\r\n"),
        (b"\r", b"\r\n.\r\n"),
        (b"\n.\n", b"\r\n..\r\n.\r\n"),  # a smuggled end becomes a stuffed line
        (b"\r.\r", b"\r\n..\r\n.\r\n"),
        (b"\0\xff\xe9", b"\0\xff\xe9\r\n.\r\n"),
    ],
)
def test_wire_form(backend, content, wire):
    assert backend.dot_stuff(content) == wire
    assert b"".join(stuff_chunks(backend, [content])) == wire


def test_cr_at_chunk_end_is_held_until_the_next_byte(backend):
    stuffer = backend.DotStuffer()
    assert stuffer.feed(b"a\r") == b"a"
    assert stuffer.feed(b"\nb") == b"\r\nb"
    assert stuffer.feed(b"\r") == b""
    assert stuffer.feed(b"") == b""
    assert stuffer.feed(b".c") == b"\r\n..c"  # the held CR was bare: a line end
    assert stuffer.finish() == b"\r\n.\r\n"


def test_finish_after_a_held_cr_closes_its_line(backend):
    stuffer = backend.DotStuffer()
    assert stuffer.feed(b"last\r") == b"last"
    assert stuffer.finish() == b"\r\n.\r\n"


def test_misuse_is_refused(backend):
    stuffer = backend.DotStuffer()
    stuffer.finish()
    with pytest.raises(ValueError, match="new DotStuffer"):
        stuffer.feed(b"x")
    with pytest.raises(ValueError, match="new DotStuffer"):
        stuffer.finish()
    with pytest.raises(TypeError):
        backend.DotStuffer().feed("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        backend.dot_stuff("text")  # type: ignore[arg-type]
    assert backend.dot_stuff(bytearray(b".a")) == b"..a\r\n.\r\n"
    assert backend.DotStuffer().feed(memoryview(b".a")) == b"..a"


def test_very_long_unbroken_line_passes_in_one_piece(backend):
    line = b"." + b"L" * (4 << 20)
    stuffer = backend.DotStuffer()
    assert stuffer.feed(line) == b"." + line
    assert stuffer.finish() == b"\r\n.\r\n"


SAMPLE = b"From: a@example.org\r\n\r\n.dot\n..two\r.\r\nbare\rcr\r\r\n.\r\nend"


def test_every_split_point_gives_the_same_wire_form(backend):
    whole = backend.dot_stuff(SAMPLE)
    for cut in range(len(SAMPLE) + 1):
        assert b"".join(stuff_chunks(backend, [SAMPLE[:cut], SAMPLE[cut:]])) == whole, cut
    one_by_one = [SAMPLE[i : i + 1] for i in range(len(SAMPLE))]
    assert b"".join(stuff_chunks(backend, one_by_one)) == whole


content_bytes = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"a", b"\0", b"\xe9"]),
    max_size=40,
).map(b"".join) | st.binary(max_size=120)


@st.composite
def chunked(draw):
    data = draw(content_bytes)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(PROPERTY, max_examples=300)
@given(chunked())
def test_wire_form_does_not_depend_on_chunking_and_is_valid(backend, case):
    content, chunks = case
    wire = backend.dot_stuff(content)
    assert b"".join(stuff_chunks(backend, chunks)) == wire
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    assert re.search(b"\r(?!\n)|(?<!\r)\n", wire) is None  # only CRLF on the wire
    assert body == b"" or body.endswith(b"\r\n")
    assert b"\r\n.\r\n" not in b"\r\n" + body  # no early end of data
    # Undoing the stuffing the naive way gives the normalised content back.
    restored = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
    expected = normalise_line_ends(content)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert restored == expected


@settings(PROPERTY, max_examples=300)
@given(chunked(), st.integers(1, 9), st.booleans())
def test_stuffed_output_read_back_by_data_reader_is_the_normalised_content(
    backend, case, read_size, normalise
):
    content, chunks = case
    wire = b"".join(stuff_chunks(backend, chunks)) + b"QUIT\r\n"
    reader = backend.DataReader(normalise=normalise)
    received = b"".join(
        reader.feed(wire[i : i + read_size])
        for i in range(0, len(wire), read_size)
        if not reader.done
    )
    expected = normalise_line_ends(content)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert reader.done
    assert received == expected
    assert (reader.bare_lf, reader.bare_cr, reader.size) == (0, 0, len(expected))
    assert wire.endswith(b".\r\nQUIT\r\n")


@settings(PROPERTY, max_examples=300)
@given(chunked())
def test_compiled_and_pure_stuffers_agree_feed_by_feed(case):
    content, chunks = case
    compiled, pure = kernels.load_backend("cython"), kernels.load_backend("python")
    assert stuff_chunks(compiled, chunks) == stuff_chunks(pure, chunks)
    assert compiled.dot_stuff(content) == pure.dot_stuff(content)
