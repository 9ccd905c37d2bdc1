"""Quoted-printable kernel (RFC 2045 6.7): both backends, against each other and the standard library."""

from __future__ import annotations

import binascii
import quopri
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta import kernels

# The `backend` fixture is a stateless namespace, so reusing it across examples is safe.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# Mail-like bytes: text, whitespace, line ends, "=", hex digits, 8-bit and NUL.
MAILISH = st.lists(
    st.sampled_from(
        [
            b"a",
            b"Z",
            b".",
            b" ",
            b"\t",
            b"\r\n",
            b"\r",
            b"\n",
            b"=",
            b"3",
            b"d",
            b"\xc3\xa9",
            b"\xff",
            b"\x00",
            b"x" * 80,
        ]
    ),
    max_size=120,
).map(b"".join)
ANY_BYTES = st.one_of(st.binary(max_size=800), MAILISH)
# Decoder input: what real QP looks like, broken in every way.
QP_PIECES = st.lists(
    st.sampled_from(
        [
            b"=",
            b"=3D",
            b"=3d",
            b"=4",
            b"=\r\n",
            b"=  \r\n",
            b"= \n",
            b"=\r",
            b" ",
            b"\t",
            b"\r\n",
            b"\n",
            b"\r",
            b"a",
            b"G",
            b"\xe9",
            b"=zz",
            b"=0A",
        ]
    ),
    max_size=80,
).map(b"".join)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def encode_in_pieces(backend, data: bytes, cuts: list[int], binary: bool) -> bytes:
    encoder = backend.QPEncoder(binary)
    return b"".join(encoder.feed(piece) for piece in chunked(data, cuts)) + encoder.finish()


def decode_in_pieces(backend, data: bytes, cuts: list[int]) -> bytes:
    decoder = backend.QPDecoder()
    return b"".join(decoder.feed(piece) for piece in chunked(data, cuts)) + decoder.finish()


def assert_valid_qp(encoded: bytes, binary: bool) -> None:
    """What RFC 2045 6.7 demands of encoder output."""
    lines = encoded.split(b"\r\n")
    for line in lines:
        assert len(line) <= 76, line  # rule 5
        assert re.fullmatch(rb"[\x21-\x7e \t]*", line), line  # 7-bit printable only
        assert not line.endswith((b" ", b"\t")), line  # rule 3
        # every "=" starts an escape or is the soft break at the end of the line
        assert re.fullmatch(rb"(?:[^=]|=[0-9A-F]{2})*=?", line), line
    if binary:
        assert all(line.endswith(b"=") for line in lines[:-1])


# ---------------------------------------------------------------- encoding
@fixture_ok
@given(data=ANY_BYTES, binary=st.booleans())
def test_round_trip_gives_back_the_exact_bytes(backend, data, binary):
    encoded = backend.qp_encode(data, binary)
    assert_valid_qp(encoded, binary)
    assert backend.qp_decode(encoded) == data


@fixture_ok
@given(data=ANY_BYTES, binary=st.booleans())
def test_the_standard_library_decodes_our_encoding(backend, data, binary):
    encoded = backend.qp_encode(data, binary)
    assert binascii.a2b_qp(encoded) == data
    assert quopri.decodestring(encoded) == data


@fixture_ok
@given(data=ANY_BYTES, cuts=st.lists(st.integers(0, 900), max_size=12), binary=st.booleans())
def test_encoding_does_not_depend_on_chunking(backend, data, cuts, binary):
    assert encode_in_pieces(backend, data, cuts, binary) == backend.qp_encode(data, binary)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"plain text", b"plain text"),
        (b"a=b", b"a=3Db"),
        (b"caf\xc3\xa9", b"caf=C3=A9"),
        (b"\x00\x7f", b"=00=7F"),
        (b"end ", b"end=20"),  # trailing space before the end of the data (rule 3)
        (b"end\t", b"end=09"),
        (b"a  \r\nb", b"a =20\r\nb"),  # only the last space before a hard break is encoded
        (b"a \tb", b"a \tb"),
        (b"line\r\n", b"line\r\n"),
        (b"\r\n\r\n", b"\r\n\r\n"),
        (b"lone\nLF", b"lone=0ALF"),  # text mode keeps only CRLF as a line break
        (b"lone\rCR", b"lone=0DCR"),
        (b"ends in CR\r", b"ends in CR=0D"),
        (b"space then CR \r", b"space then CR =0D"),
        (b".\r\n", b".\r\n"),
    ],
)
def test_text_mode_edge_cases(backend, data, expected):
    assert backend.qp_encode(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\r\nb", b"a=0D=0Ab"),
        (b"a \r\n", b"a =0D=0A"),
        (b"a \n", b"a =0A"),
        (b" ", b"=20"),
    ],
)
def test_binary_mode_encodes_line_ends(backend, data, expected):
    assert backend.qp_encode(data, binary=True) == expected


def test_long_lines_get_soft_breaks_at_76_characters(backend):
    encoded = backend.qp_encode(b"x" * 1000)
    lines = encoded.split(b"\r\n")
    assert all(line == b"x" * 75 + b"=" for line in lines[:-1])
    assert b"".join(line.rstrip(b"=") for line in lines) == b"x" * 1000


def test_a_line_of_75_characters_needs_no_soft_break(backend):
    assert backend.qp_encode(b"y" * 75 + b"\r\n") == b"y" * 75 + b"\r\n"
    assert backend.qp_encode(b"y" * 76) == b"y" * 75 + b"=\r\ny"


def test_an_escape_is_never_split_by_a_soft_break(backend):
    encoded = backend.qp_encode(b"x" * 73 + b"\xff")
    assert encoded == b"x" * 73 + b"=\r\n=FF"


def test_a_trailing_space_escape_moves_to_the_next_line_when_it_does_not_fit(backend):
    assert backend.qp_encode(b"x" * 74 + b" \r\n") == b"x" * 74 + b"=\r\n=20\r\n"


def test_encoder_refuses_use_after_finish(backend):
    encoder = backend.QPEncoder()
    assert encoder.feed(b"a ") == b"a"
    assert encoder.finish() == b"=20"
    with pytest.raises(ValueError, match="new encoder"):
        encoder.feed(b"b")


def test_text_mode_differs_from_b2a_qp_on_lone_lf_on_purpose(backend):
    # b2a_qp treats a lone LF as a line break; we keep the exact bytes of a
    # CRLF message (=0A), so decoding the downgraded body gives back the original.
    assert binascii.b2a_qp(b"a\nb", istext=True) == b"a\nb"
    assert backend.qp_encode(b"a\nb") == b"a=0Ab"


# ---------------------------------------------------------------- decoding
@fixture_ok
@given(data=st.binary(max_size=800))
def test_we_decode_what_the_standard_library_encodes(backend, data):
    assert backend.qp_decode(binascii.b2a_qp(data, istext=False)) == data
    if b"\r" not in data:  # quopri is a text-mode encoder: it rewrites some CRLF line ends as LF
        assert backend.qp_decode(quopri.encodestring(data, quotetabs=True)) == data


@fixture_ok
@given(data=st.one_of(QP_PIECES, ANY_BYTES), cuts=st.lists(st.integers(0, 900), max_size=12))
def test_decoding_does_not_depend_on_chunking(backend, data, cuts):
    assert decode_in_pieces(backend, data, cuts) == backend.qp_decode(data)


@fixture_ok
@given(data=QP_PIECES)
def test_decoding_one_byte_at_a_time(backend, data):
    assert decode_in_pieces(backend, data, list(range(len(data)))) == backend.qp_decode(data)


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"", b""),
        (b"caf=C3=A9", b"caf\xc3\xa9"),
        (b"caf=c3=a9", b"caf\xc3\xa9"),  # lower-case hex
        (b"soft=\r\nbreak", b"softbreak"),
        (b"soft=\nbreak", b"softbreak"),  # soft break with a lone LF
        (b"soft=  \r\nbreak", b"softbreak"),  # transport whitespace after the "="
        (b"ends with =", b"ends with "),  # "=" at the end of the input: a final soft break
        (b"ends with = \t", b"ends with "),
        (b"trailing  \r\nspace", b"trailing\r\nspace"),  # rule 3: trailing whitespace dropped
        (b"trailing \t", b"trailing"),
        (b"kept=20\r\n", b"kept \r\n"),  # encoded whitespace is not trailing whitespace
        (b"a =\r\nb", b"a b"),
        (b"lone\nLF", b"lone\nLF"),
        (b"lone\rCR", b"lone\rCR"),
        (b"=zz", b"=zz"),  # malformed: kept literally
        (b"=4", b"=4"),
        (b"=4=", b"=4"),
        (b"==41", b"=A"),  # the first "=" is literal, the second starts "=41"
        (b"= x", b"= x"),
        (b"=\rx", b"=\rx"),
        (b"8-bit \xe9 passes", b"8-bit \xe9 passes"),
        (b"nul=00", b"nul\x00"),
    ],
)
def test_decoding_edge_cases(backend, encoded, expected):
    assert backend.qp_decode(encoded) == expected


@pytest.mark.parametrize(
    ("encoded", "ours", "theirs", "reason"),
    [
        (
            b"a  \r\nb",
            b"a\r\nb",
            b"a  \r\nb",
            "RFC 2045 6.7 rule 3: trailing whitespace is dropped",
        ),
        (b"==41", b"=A", b"=41", "a malformed '=' is literal and decoding resumes after it"),
        (b"=\rx", b"=\rx", b"", "'=' then a lone CR is not a soft break; nothing is lost"),
    ],
)
def test_decoding_differs_from_a2b_qp_on_purpose(backend, encoded, ours, theirs, reason):
    assert binascii.a2b_qp(encoded) == theirs
    assert backend.qp_decode(encoded) == ours, reason


def test_a_long_whitespace_run_is_held_without_loss(backend):
    decoder = backend.QPDecoder()
    out = b"".join(decoder.feed(b" ") for _ in range(5000))
    out += decoder.feed(b"x")
    assert out + decoder.finish() == b" " * 5000 + b"x"
    decoder = backend.QPDecoder()
    out = b"".join(decoder.feed(b"\t ") for _ in range(3000))
    assert out + decoder.feed(b"\r\n") + decoder.finish() == b"\r\n"


def test_decoder_refuses_use_after_finish(backend):
    decoder = backend.QPDecoder()
    decoder.finish()
    with pytest.raises(ValueError, match="new decoder"):
        decoder.finish()


def test_decoder_accepts_any_buffer(backend):
    assert backend.qp_decode(memoryview(b"a=3D")) == backend.qp_decode(bytearray(b"a=3D")) == b"a="


# ---------------------------------------------------------------- parity
@given(data=st.one_of(QP_PIECES, ANY_BYTES), binary=st.booleans())
def test_compiled_and_pure_kernels_agree(data, binary):
    compiled, pure = kernels.load_backend("cython"), kernels.load_backend("python")
    assert compiled.qp_decode(data) == pure.qp_decode(data)
    assert compiled.qp_encode(data, binary) == pure.qp_encode(data, binary)
