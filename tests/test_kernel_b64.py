"""base64 kernel (RFC 2045 6.8): both backends, against each other and the standard library."""

from __future__ import annotations

import base64
import binascii

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta import kernels

# The `backend` fixture is a stateless namespace, so reusing it across examples is safe.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
JUNK = bytes(b for b in range(256) if b not in ALPHABET and b not in b"= \t\r\n")


def bytes_over(alphabet: bytes, max_size: int) -> st.SearchStrategy[bytes]:
    """Byte strings made of the given bytes only (malformed-input generators)."""
    return st.lists(st.sampled_from(list(alphabet)), max_size=max_size).map(bytes)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split `data` at the given positions (clamped and sorted)."""
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def encode_in_pieces(backend, data: bytes, cuts: list[int], line_length: int = 76) -> bytes:
    encoder = backend.Base64Encoder(line_length)
    return b"".join(encoder.feed(piece) for piece in chunked(data, cuts)) + encoder.finish()


def decode_in_pieces(backend, data: bytes, cuts: list[int], strict: bool = True) -> bytes:
    decoder = backend.Base64Decoder(strict)
    return b"".join(decoder.feed(piece) for piece in chunked(data, cuts)) + decoder.finish()


def outcome(call):
    """The result of `call()`, or the error's class, offset and text, for comparisons."""
    try:
        return call()
    except kernels.load_backend("python").Base64DecodeError as error:
        return ("error", error.offset, str(error))


# ---------------------------------------------------------------- encoding
@fixture_ok
@given(data=st.binary(max_size=2000))
def test_encoding_matches_the_standard_library_with_crlf(backend, data):
    assert backend.b64_encode(data) == base64.encodebytes(data).replace(b"\n", b"\r\n")


@fixture_ok
@given(data=st.binary(max_size=2000))
def test_unbroken_encoding_matches_b2a_base64(backend, data):
    assert backend.b64_encode(data, 0) == binascii.b2a_base64(data, newline=False)


@fixture_ok
@given(
    data=st.binary(max_size=1500),
    cuts=st.lists(st.integers(0, 1500), max_size=12),
    line_length=st.sampled_from([76, 64, 4, 0]),
)
def test_encoding_does_not_depend_on_chunking(backend, data, cuts, line_length):
    whole = backend.b64_encode(data, line_length)
    assert encode_in_pieces(backend, data, cuts, line_length) == whole


@fixture_ok
@given(data=st.binary(max_size=1500), line_length=st.sampled_from([76, 64, 4]))
def test_encoded_lines_have_the_requested_length_and_end_in_crlf(backend, data, line_length):
    encoded = backend.b64_encode(data, line_length)
    if not data:
        assert encoded == b""
        return
    assert encoded.endswith(b"\r\n")
    lines = encoded[:-2].split(b"\r\n")
    assert all(len(line) == line_length for line in lines[:-1])
    assert 0 < len(lines[-1]) <= line_length


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (b"\x00", b"AA==\r\n"),
        (b"\x00\x00\x00", b"AAAA\r\n"),
        (b"\xff\xfe\xfd", b"//79\r\n"),
        (b"x" * 57, base64.encodebytes(b"x" * 57).replace(b"\n", b"\r\n")),  # one full line
        (b"x" * 58, base64.encodebytes(b"x" * 58).replace(b"\n", b"\r\n")),  # one more byte
    ],
)
def test_encoding_edge_cases(backend, data, expected):
    assert backend.b64_encode(data) == expected


def test_a_very_long_unbroken_line_for_auth(backend):
    data = bytes(range(256)) * 400
    encoded = backend.b64_encode(data, 0)
    assert b"\r" not in encoded and b"\n" not in encoded
    assert binascii.a2b_base64(encoded) == data


def test_encoder_accepts_any_buffer(backend):
    assert (
        backend.b64_encode(bytearray(b"abc"))
        == backend.b64_encode(memoryview(b"abc"))
        == (b"YWJj\r\n")
    )


@pytest.mark.parametrize("line_length", [-4, 3, 77, 75])
def test_encoder_rejects_line_lengths_that_are_not_multiples_of_4(backend, line_length):
    with pytest.raises(ValueError, match="multiple of 4"):
        backend.Base64Encoder(line_length)


def test_encoder_refuses_use_after_finish(backend):
    encoder = backend.Base64Encoder()
    encoder.feed(b"ab")
    assert encoder.finish() == b"YWI=\r\n"
    with pytest.raises(ValueError, match="new encoder"):
        encoder.feed(b"c")
    with pytest.raises(ValueError, match="new encoder"):
        encoder.finish()


# ---------------------------------------------------------------- decoding
@fixture_ok
@given(data=st.binary(max_size=1500), line_length=st.sampled_from([76, 64, 4, 0]))
def test_round_trip(backend, data, line_length):
    assert backend.b64_decode(backend.b64_encode(data, line_length)) == data


@fixture_ok
@given(data=st.binary(max_size=1500))
def test_decoding_agrees_with_binascii_strict_mode_on_unbroken_input(backend, data):
    encoded = base64.b64encode(data)
    assert backend.b64_decode(encoded) == binascii.a2b_base64(encoded, strict_mode=True) == data


@fixture_ok
@given(
    data=st.binary(max_size=600),
    junk=st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(list(JUNK))), max_size=10),
)
def test_lenient_decoding_skips_junk_as_binascii_does(backend, data, junk):
    encoded = bytearray(base64.encodebytes(data))
    for position, byte in sorted(junk, reverse=True):
        encoded.insert(min(position, len(encoded)), byte)
    assert backend.b64_decode(bytes(encoded), strict=False) == data
    assert binascii.a2b_base64(bytes(encoded)) == data


@fixture_ok
@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 1000), max_size=12),
    strict=st.booleans(),
)
def test_decoding_does_not_depend_on_chunking(backend, data, cuts, strict):
    encoded = backend.b64_encode(data)
    assert decode_in_pieces(backend, encoded, cuts, strict) == data


@fixture_ok
@given(
    data=bytes_over(b"AQ=z \r\n!\x80-", 80),
    cuts=st.lists(st.integers(0, 80), max_size=8),
    strict=st.booleans(),
)
def test_malformed_input_decodes_the_same_in_pieces_and_whole(backend, data, cuts, strict):
    whole = outcome(lambda: backend.b64_decode(data, strict))
    assert outcome(lambda: decode_in_pieces(backend, data, cuts, strict)) == whole


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"", b""),
        (b"\r\n \t", b""),
        (b"AA==", b"\x00"),
        (b"AAAA", b"\x00\x00\x00"),
        (b"QU\r\nJD", b"ABC"),
        (b"Q U J D", b"ABC"),
        (b"QQ=\r\n=", b"A"),  # padding broken across lines
        (b"QUI=\r\n", b"AB"),
        (b"gA==", b"\x80"),
    ],
)
def test_strict_decoding_accepts_wrapped_and_padded_input(backend, encoded, expected):
    assert backend.b64_decode(encoded) == expected


@pytest.mark.parametrize(
    ("encoded", "offset", "reason"),
    [
        (b"QUJD!QUJD", 4, "byte 0x21 is not in the base64 alphabet"),
        (b"QUJD\xc3QUJD", 4, "byte 0xc3 is not in the base64 alphabet"),
        (b"QUJD\x00", 4, "byte 0x00 is not in the base64 alphabet"),
        (b"=QUJD", 0, "'=' where a data character is expected"),
        (b"Q=UJD", 1, "'=' where a data character is expected"),
        (b"QQ==QQ==", 4, "data after the end of the padding"),
        (b"QUI= x", 5, "data after the end of the padding"),
        (b"QQ=A", 3, "expected a second '=' to end the padding"),
        (b"QQ=", 3, "input ends inside the padding (one '=' missing)"),
        (b"QUJDQQ", 6, "input ends with 2 characters of an incomplete quantum (padding missing)"),
        (b"Q", 1, "input ends with 1 characters of an incomplete quantum (padding missing)"),
    ],
)
def test_strict_decoding_names_the_offset_and_the_reason(backend, encoded, offset, reason):
    with pytest.raises(backend.Base64DecodeError) as caught:
        backend.b64_decode(encoded)
    assert caught.value.offset == offset
    assert caught.value.reason == reason
    assert f"offset {offset}" in str(caught.value) and "strict=False" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_strict_error_offsets_count_from_the_start_of_the_stream(backend):
    decoder = backend.Base64Decoder()
    assert decoder.feed(b"QUJD\r\n") == b"ABC"
    with pytest.raises(backend.Base64DecodeError) as caught:
        decoder.feed(b"QU*D")
    assert caught.value.offset == 8


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"QUJD!QUJD", b"ABCABC"),
        (b"=QUJD", b"ABC"),  # a stray "=" is skipped
        (b"QQ==QQ==", b"A"),  # the padding ends the data, as in binascii
        (b"QQ=A", b"A"),
        (b"QUJDQQ", b"ABCA"),  # missing padding supplied
        (b"QUJDQUI", b"ABCAB"),
        (b"QUJDQ", b"ABC"),  # six bits make no byte
    ],
)
def test_lenient_decoding(backend, encoded, expected):
    assert backend.b64_decode(encoded, strict=False) == expected


@pytest.mark.parametrize(
    ("encoded", "ours", "reason"),
    [
        # binascii raises "Incorrect padding"; mail cut short in transit should
        # still yield the bytes it carries.
        (b"QUJDQQ", b"ABCA", "missing padding"),
        # binascii (lenient) raises for a lone "=" followed by data; RFC 2045 6.8
        # lets "=" mark the end of the data, so we stop there.
        (b"QQ=A", b"A", "single '=' ends the data"),
    ],
)
def test_lenient_decoding_differs_from_binascii_on_purpose(backend, encoded, ours, reason):
    with pytest.raises(binascii.Error):
        binascii.a2b_base64(encoded)
    assert backend.b64_decode(encoded, strict=False) == ours, reason


def test_strict_decoding_differs_from_binascii_strict_mode_on_line_breaks(backend):
    # binascii's strict mode rejects line breaks; MIME bodies are wrapped at 76
    # columns, so ours ignores CR, LF, SP and TAB and is strict about the rest.
    wrapped = base64.encodebytes(b"x" * 100)
    with pytest.raises(binascii.Error):
        binascii.a2b_base64(wrapped, strict_mode=True)
    assert backend.b64_decode(wrapped) == b"x" * 100


def test_decoder_refuses_use_after_finish(backend):
    decoder = backend.Base64Decoder()
    decoder.feed(b"QUJD")
    assert decoder.finish() == b""
    with pytest.raises(ValueError, match="new decoder"):
        decoder.feed(b"QUJD")


def test_decoder_accepts_any_buffer(backend):
    assert backend.b64_decode(memoryview(b"QUJD")) == backend.b64_decode(bytearray(b"QUJD"))


# ---------------------------------------------------------------- parity
@given(
    data=bytes_over(b"QUJDz+/= \r\n\t!\x80\x00", 300),
    strict=st.booleans(),
)
def test_compiled_and_pure_decoders_agree_on_any_input(data, strict):
    compiled, pure = kernels.load_backend("cython"), kernels.load_backend("python")
    assert outcome(lambda: compiled.b64_decode(data, strict)) == outcome(
        lambda: pure.b64_decode(data, strict)
    )


def test_both_backends_raise_the_same_error_class():
    compiled, pure = kernels.load_backend("cython"), kernels.load_backend("python")
    assert compiled.Base64DecodeError is pure.Base64DecodeError
