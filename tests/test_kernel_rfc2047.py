"""RFC 2047 encoded words: both backends, against each other and email.header."""

from __future__ import annotations

import email.header
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastmta import kernels

# The `backend` fixture is a stateless namespace, so reusing it across examples is safe.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

WORD = re.compile(r"=\?([^?]+)\?([QB])\?([^?]*)\?=")
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=200)
# email.header splits on every character str.isspace() accepts (NEL, U+2028, ...)
# and rejoins with spaces; compare with it on text whose only whitespace is SP.
STDLIB_SAFE_TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp", "Zs"), include_characters=" "),
    max_size=200,
)


def stdlib_decode(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))


# ---------------------------------------------------------------- decoding
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 2047 section 8, the examples of how whitespace is displayed
        ("(=?ISO-8859-1?Q?a?=)", "(a)"),
        ("(=?ISO-8859-1?Q?a?= b)", "(a b)"),
        ("(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)"),
        ("(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)", "(ab)"),
        ("(=?ISO-8859-1?Q?a?=\r\n    =?ISO-8859-1?Q?b?=)", "(ab)"),
        ("(=?ISO-8859-1?Q?a_b?=)", "(a b)"),
        ("(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", "(a b)"),
        # the other examples of section 8
        ("=?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>", "Keith Moore <moore@cs.utk.edu>"),
        (
            "=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>",
            "Keld Jørn Simonsen <keld@dkuug.dk>",
        ),
        (
            "=?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>",
            "André Pirard <PIRARD@vm1.ulg.ac.be>",
        ),
        (
            (
                "=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=\r\n"
                " =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?="
            ),
            "If you can read this you understand the example.",
        ),
    ],
)
def test_rfc_2047_examples(backend, value, expected):
    decoded = backend.decode_words(value)
    assert decoded.text == expected
    assert decoded.problems == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("plain ascii", "plain ascii"),
        ("=?utf-8?q?Gr=c3=bc=C3=9Fe?=", "Grüße"),  # lower-case q and hex
        ("=?UTF-8?b?R3LDvMOfZQ?=", "Grüße"),  # missing padding
        ("=?utf-8*de?Q?Gr=C3=BC=C3=9Fe?=", "Grüße"),  # RFC 2231 language suffix
        ("=?utf-8?q?a=5Fb_c?=", "a_b c"),
        ("=?utf-8?q??=", ""),
        ("=?utf-8?q?=E2=82?= =?utf-8?q?=AC?=", "€"),  # a character split across words
        ("a\r\n b", "a b"),  # unfolded
        ("=?utf-8?x?abc?=", "=?utf-8?x?abc?="),  # not an encoding
        ("=?utf-8?q?a\r\nb?=", "=?utf-8?q?a\r\nb?="),  # a line end inside is no word
        ("=? utf-8?q?a?=", "=? utf-8?q?a?="),
        ("x=?utf-8?q?b?=y", "xby"),
        ("=?utf-8?q?a?==?utf-8?q?b?=", "ab"),
    ],
)
def test_decoding_edge_cases(backend, value, expected):
    decoded = backend.decode_words(value)
    assert decoded.text == expected
    assert decoded.problems == ()


def test_a_word_with_an_unknown_charset_is_kept_and_reported(backend):
    decoded = backend.decode_words("=?x-klingon?q?Qapla?= and =?utf-8?q?caf=C3=A9?=")
    assert decoded.text == "=?x-klingon?q?Qapla?= and café"
    assert len(decoded.problems) == 1
    assert "x-klingon" in decoded.problems[0] and "kept" in decoded.problems[0]


@pytest.mark.parametrize("charset", ["zlib", "base64", "rot13", "hex", "bz2", "uu", "quopri"])
def test_codecs_that_are_not_charsets_are_never_run(backend, charset):
    value = "=?zlib?b?eJxLTEwEAAJJAYU=?=".replace("zlib", charset)
    decoded = backend.decode_words(value)
    assert decoded.text == value
    assert "unknown charset" in decoded.problems[0]


def test_bytes_invalid_in_their_charset_become_replacement_characters(backend):
    decoded = backend.decode_words("=?utf-8?q?bad=FF?=")
    assert decoded.text == "bad\ufffd"
    assert "utf-8" in decoded.problems[0]


def test_malformed_base64_is_reported(backend):
    decoded = backend.decode_words("=?utf-8?b?QUJD!QUJD?=")
    assert decoded.text == "ABCABC"
    assert "malformed base64" in decoded.problems[0]


def test_raw_utf8_in_a_bytes_value_is_decoded(backend):
    decoded = backend.decode_words("Grüße =?utf-8?q?aus?= Köln".encode())
    assert decoded == ("Grüße aus Köln", ())


def test_raw_bytes_that_are_not_utf8_are_replaced_and_reported(backend):
    decoded = backend.decode_words(b"caf\xe9")
    assert decoded.text == "caf\ufffd"
    assert "not UTF-8" in decoded.problems[0]


def test_a_str_value_comes_back_exactly(backend):
    value = "lone surrogate \udc80 and \x00"
    assert backend.decode_words(value) == (value, ())


def test_charset_labels_seen_in_mail(backend):
    # Outlook's Korean label, and gb2312 words carrying GBK-only characters
    assert backend.decode_words("=?ks_c_5601-1987?b?x9GxuQ==?=").text == "한국"
    assert backend.decode_words("=?gb2312?b?gUc=?=").text == "\u4e1f"  # GBK-only: 0x81 0x47


@fixture_ok
@given(
    parts=st.lists(
        st.one_of(
            st.from_regex(r"[A-Za-z0-9.,!<>@]{1,12}", fullmatch=True),
            st.tuples(STDLIB_SAFE_TEXT.filter(bool), st.sampled_from(["utf-8", "iso-8859-1"])),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_decoding_agrees_with_email_header(backend, parts):
    rendered = []
    for part in parts:
        if isinstance(part, str):
            rendered.append(part)
        else:
            text, charset = part
            try:
                text.encode(charset)
            except UnicodeEncodeError:
                charset = "utf-8"
            rendered.append(email.header.Header(text, charset).encode(linesep="\r\n"))
    value = " ".join(rendered)
    assert backend.decode_words(value).text == stdlib_decode(value)


@pytest.mark.parametrize(
    ("value", "ours", "reason"),
    [
        ("x=?utf-8?q?b?=y", "xby", "email.header invents spaces around a word glued to text"),
        ("=?utf-8*en?q?b?=", "b", "email.header fails on an RFC 2231 language suffix"),
    ],
)
def test_decoding_differs_from_email_header_on_purpose(backend, value, ours, reason):
    try:
        theirs = stdlib_decode(value)
    except LookupError:
        theirs = None
    assert theirs != ours
    assert backend.decode_words(value).text == ours, reason


# ---------------------------------------------------------------- encoding
@fixture_ok
@given(text=TEXT, offset=st.integers(0, 80))
def test_encoded_words_decode_back_and_respect_the_limits(backend, text, offset):
    encoded = backend.encode_words(text, offset=offset)
    # A result that starts with a fold follows "Name:" directly; header parsing
    # drops the whitespace after the colon, so compare what follows it.
    value = encoded.removeprefix("\r\n ")
    assert backend.decode_words(value) == (text, ())
    if not any(char.isspace() and char != " " for char in text):
        assert stdlib_decode(value) == text
    if not text:
        assert encoded == ""
        return
    lines = encoded.split("\r\n")
    assert len(offset * "x" + lines[0]) <= 76 or lines[0] == ""
    assert all(line.startswith(" ") and len(line) <= 76 for line in lines[1:])
    words = WORD.findall(encoded)
    assert len(words) == len([line for line in lines if line])
    for charset, letter, payload in words:
        word = f"=?{charset}?{letter}?{payload}?="
        assert len(word) <= 75
        # each word holds whole characters: it decodes on its own without error
        assert backend.decode_words(word).problems == ()


@fixture_ok
@given(text=TEXT, charset=st.sampled_from(["iso-8859-1", "iso-2022-jp", "shift_jis", "koi8-r"]))
def test_other_charsets_round_trip(backend, text, charset):
    try:
        # (Shift_JIS writes U+00A5 as 0x5C, which reads back as a backslash.)
        assume(text.encode(charset).decode(charset) == text)
    except UnicodeError:  # not in the charset, or (ESC in ISO-2022-JP) not read back by it
        assume(False)
    encoded = backend.encode_words(text, charset)
    assert backend.decode_words(encoded) == (text, ())
    assert all(len(word.strip()) <= 75 for word in encoded.split("\r\n"))


def test_the_shorter_of_q_and_b_is_chosen(backend):
    # Q: 11 literal + 2 escaped bytes = 17 characters; B: 13 bytes = 20
    assert backend.encode_words("Café au lait") == "=?utf-8?Q?Caf=C3=A9_au_lait?="
    # Q: 9 literal + 2 spaces + 6 escaped bytes = 29; B: 17 bytes = 24
    assert backend.encode_words("Grüße aus Köln") == "=?utf-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?="
    assert backend.encode_words("日本語") == "=?utf-8?B?5pel5pys6Kqe?="


def test_q_encodes_everything_outside_the_phrase_set(backend):
    encoded = backend.encode_words('a"b(c)_=?d' + "x" * 40)
    assert encoded == "=?utf-8?Q?a=22b=28c=29=5F=3D=3Fd" + "x" * 40 + "?="


def test_a_long_header_is_folded_between_words(backend):
    text = "Grüße aus Köln " * 20
    encoded = backend.encode_words(text, offset=len("Subject: "))
    lines = encoded.split("\r\n")
    assert len(lines) > 3
    assert len("Subject: " + lines[0]) <= 76
    assert backend.decode_words(encoded).text == text


def test_no_room_after_a_long_header_name_starts_with_a_fold(backend):
    encoded = backend.encode_words("é", offset=70)
    assert encoded == "\r\n =?utf-8?B?w6k=?="


def test_unknown_8bit_carries_raw_bytes(backend):
    raw = b"caf\xe9 \x80"
    encoded = backend.encode_words(raw.decode("latin-1"), "unknown-8bit")
    assert encoded == "=?unknown-8bit?B?Y2Fm6SCA?="  # base64 of the raw bytes
    decoded = backend.decode_words(encoded)
    assert decoded.text == encoded  # no codec for it: kept, and said so
    assert decoded.problems


def test_encoding_errors_say_what_to_do(backend):
    with pytest.raises(ValueError, match="pass a name such as 'utf-8'"):
        backend.encode_words("x", "utf 8")
    with pytest.raises(UnicodeEncodeError):
        backend.encode_words("日本", "iso-8859-1")
    for charset in ("x-klingon", "base64", "zlib"):
        with pytest.raises(ValueError, match="use 'utf-8'"):
            backend.encode_words("x", charset)


# ---------------------------------------------------------------- parity
@given(
    value=st.lists(
        st.sampled_from(
            [
                "=?",
                "?=",
                "utf-8",
                "UTF-8*en",
                "x-bad",
                "zlib",
                "?q?",
                "?B?",
                "?b?",
                "=C3",
                "=A9",
                "QUJD",
                "w6k=",
                "_",
                " ",
                "\r\n ",
                "\n",
                "é",
                "=",
                "?",
            ]
        ),
        max_size=30,
    ).map("".join),
    as_bytes=st.booleans(),
)
def test_compiled_and_pure_decoders_agree(value, as_bytes):
    compiled, pure = kernels.load_backend("cython"), kernels.load_backend("python")
    data = value.encode() if as_bytes else value
    assert compiled.decode_words(data) == pure.decode_words(data)


@given(text=TEXT, offset=st.integers(0, 80))
def test_compiled_and_pure_encoders_agree(text, offset):
    compiled, pure = kernels.load_backend("cython"), kernels.load_backend("python")
    assert compiled.encode_words(text, offset=offset) == pure.encode_words(text, offset=offset)


def test_both_backends_return_the_same_result_class():
    compiled, pure = kernels.load_backend("cython"), kernels.load_backend("python")
    assert compiled.DecodedHeader is pure.DecodedHeader
