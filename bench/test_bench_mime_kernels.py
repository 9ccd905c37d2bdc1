"""Throughput of the MIME kernels: base64, quoted-printable and RFC 2047 words, both
backends and the stdlib.

Inputs: a 1 MiB text mail body (UTF-8 prose in several languages, wrapped lines,
some long lines, trailing spaces) and a 1 MiB binary attachment (random bytes).
Encoders read the 1 MiB; decoders read its encoding (76-column lines with CRLF)
and give the 1 MiB back.  `extra_info["MB/s"]` is megabytes (10**6 octets) of
*unencoded* data per second in the fastest round, so encode and decode numbers
compare directly.  The stdlib rows do the same job its fastest way, line
wrapping included.  RFC 2047 runs over a batch of Subject values instead (see
its section).  Results: bench/README.md.

    .venv/bin/python -m pytest bench/test_bench_mime_kernels.py --benchmark-enable \\
        --benchmark-columns=min,mean,rounds --benchmark-sort=name

Without --benchmark-enable (the project default) each case runs once, as a smoke test.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections.abc import Sequence
from email.header import Header, decode_header, make_header

import pytest

from fastmta import kernels

MIB = 1 << 20
BACKENDS = ("cython", "python")

# Western European mail: mostly ASCII words, some accented ones, a rare emoji.
_WESTERN_WORDS = (
    "the of and to in is that for it as was with be by on not this are or from at which but "
    "have an they you were there been one all we their has would when if so no what up "
    "report invoice meeting tomorrow schedule attached please review thanks regards project "
    "der die und nicht mit auf für über schöne Grüße Straße Köln "
    "le la les des est pour très bientôt café déjà façade naïve "
    "numbers budget quarter delivery queue server mailbox sender recipient 🙂"
)
_WESTERN = _WESTERN_WORDS.split()
# Cyrillic and Japanese prose: nearly every byte is 8-bit (the worst case for QP).
_DENSE_WORDS = (
    "Привет как дела спасибо письмо отчёт встреча завтра пожалуйста "
    "東京 大阪 ありがとう 会議 明日 報告書 添付 よろしく お願いします"
)
_DENSE = _DENSE_WORDS.split()


def text_body(size: int = MIB, seed: int = 31, vocabulary: Sequence[str] = _WESTERN) -> bytes:
    """Mail prose in UTF-8: paragraphs wrapped at varied widths, quoting, long lines."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    total = 0
    while total < size:
        roll = rng.random()
        if roll < 0.08:
            line = b""
        elif roll < 0.11:  # a long line, as HTML or a pasted URL gives
            line = " ".join(rng.choices(vocabulary, k=rng.randint(60, 120))).encode()
        else:
            line = " ".join(rng.choices(vocabulary, k=rng.randint(4, 12))).encode()
            if roll < 0.2:
                line = b"> " + line
            if roll > 0.97:
                line += b" "  # trailing whitespace, which QP must encode
        lines.append(line + b"\r\n")
        total += len(line) + 2
    body = b"".join(lines)[:size]
    return body.decode("utf-8", "ignore").encode()  # never cut inside a character


def binary_body(size: int = MIB, seed: int = 32) -> bytes:
    return random.Random(seed).randbytes(size)


BODIES = {"text": text_body(), "binary": binary_body()}
QP_BODIES = {**BODIES, "dense-utf8": text_body(seed=33, vocabulary=_DENSE)}
QP_BINARY = {"text": False, "dense-utf8": False, "binary": True}


def record(benchmark, octets: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["MB/s"] = round(octets / stats.stats.min / 1e6, 1)


def stdlib_b64_wrapped(data: bytes) -> bytes:
    """binascii.b2a_base64 of the whole input, then cut into 76-column CRLF lines."""
    encoded = binascii.b2a_base64(data, newline=False)
    lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
    lines.append(b"")
    return b"\r\n".join(lines)


# ---------------------------------------------------------------- base64
@pytest.mark.parametrize("body", sorted(BODIES))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_b64_encode(benchmark, backend_name, body):
    benchmark.group = f"base64 encode {body}"
    encode = kernels.load_backend(backend_name).b64_encode
    data = BODIES[body]
    assert benchmark(encode, data) == stdlib_b64_wrapped(data)
    record(benchmark, len(data))


@pytest.mark.parametrize("body", sorted(BODIES))
def test_b64_encode_stdlib_encodebytes(benchmark, body):
    """base64.encodebytes: LF line ends, one b2a_base64 call per 57-byte line."""
    benchmark.group = f"base64 encode {body}"
    data = BODIES[body]
    assert len(benchmark(base64.encodebytes, data)) > len(data)
    record(benchmark, len(data))


@pytest.mark.parametrize("body", sorted(BODIES))
def test_b64_encode_stdlib_b2a_and_wrap(benchmark, body):
    benchmark.group = f"base64 encode {body}"
    data = BODIES[body]
    assert len(benchmark(stdlib_b64_wrapped, data)) > len(data)
    record(benchmark, len(data))


@pytest.mark.parametrize("body", sorted(BODIES))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_b64_decode(benchmark, backend_name, body):
    benchmark.group = f"base64 decode {body}"
    decode = kernels.load_backend(backend_name).b64_decode
    encoded = stdlib_b64_wrapped(BODIES[body])
    assert benchmark(decode, encoded) == BODIES[body]
    record(benchmark, len(BODIES[body]))


@pytest.mark.parametrize("body", sorted(BODIES))
def test_b64_decode_stdlib_a2b(benchmark, body):
    """binascii.a2b_base64 skips the line breaks itself (what base64.decodebytes calls)."""
    benchmark.group = f"base64 decode {body}"
    encoded = stdlib_b64_wrapped(BODIES[body])
    assert benchmark(binascii.a2b_base64, encoded) == BODIES[body]
    record(benchmark, len(BODIES[body]))


# ---------------------------------------------------------------- quoted-printable
@pytest.mark.parametrize("body", sorted(QP_BODIES))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_qp_encode(benchmark, backend_name, body):
    benchmark.group = f"quoted-printable encode {body}"
    encode = kernels.load_backend(backend_name).qp_encode
    data = QP_BODIES[body]
    encoded = benchmark(encode, data, QP_BINARY[body])
    assert binascii.a2b_qp(encoded) == data
    record(benchmark, len(data))


@pytest.mark.parametrize("body", sorted(QP_BODIES))
def test_qp_encode_stdlib_b2a_qp(benchmark, body):
    """binascii.b2a_qp (what quopri.encodestring calls); istext follows our mode."""
    benchmark.group = f"quoted-printable encode {body}"
    data = QP_BODIES[body]
    encoded = benchmark(binascii.b2a_qp, data, False, not QP_BINARY[body])
    assert binascii.a2b_qp(encoded) == data
    record(benchmark, len(data))


@pytest.mark.parametrize("body", sorted(QP_BODIES))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_qp_decode(benchmark, backend_name, body):
    benchmark.group = f"quoted-printable decode {body}"
    decode = kernels.load_backend(backend_name).qp_decode
    encoded = kernels.qp_encode(QP_BODIES[body], QP_BINARY[body])
    assert benchmark(decode, encoded) == QP_BODIES[body]
    record(benchmark, len(QP_BODIES[body]))


@pytest.mark.parametrize("body", sorted(QP_BODIES))
def test_qp_decode_stdlib_a2b_qp(benchmark, body):
    benchmark.group = f"quoted-printable decode {body}"
    encoded = kernels.qp_encode(QP_BODIES[body], QP_BINARY[body])
    assert benchmark(binascii.a2b_qp, encoded) == QP_BODIES[body]
    record(benchmark, len(QP_BODIES[body]))


# ---------------------------------------------------------------- RFC 2047 encoded words
def subjects(count: int = 2000, seed: int = 34) -> list[str]:
    """Subject texts as mail carries them: a "Re: " now and then, 3 to 14 words, two in
    three from the Western vocabulary (mostly ASCII: Q wins), one in three Cyrillic or
    Japanese (B wins); 64 octets of UTF-8 on average, and about 60% of them need more
    than one encoded word."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        vocabulary = _DENSE if rng.random() < 1 / 3 else _WESTERN
        text = " ".join(rng.choices(vocabulary, k=rng.randint(3, 14)))
        out.append(("Re: " if rng.random() < 0.3 else "") + text)
    return out


SUBJECTS = subjects()
SUBJECT_OCTETS = sum(len(text.encode()) for text in SUBJECTS)  # MB/s counts decoded UTF-8
HEADER_NAME = "Subject"
OFFSET = len(HEADER_NAME) + 2  # "Subject: " is already on the first line


def record_subjects(benchmark) -> None:
    record(benchmark, SUBJECT_OCTETS)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["headers/s"] = round(len(SUBJECTS) / stats.stats.min)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_rfc2047_encode(benchmark, backend_name):
    benchmark.group = "rfc2047 encode subjects"
    encode = kernels.load_backend(backend_name).encode_words

    def run() -> list[str]:
        return [encode(text, "utf-8", OFFSET) for text in SUBJECTS]

    encoded = benchmark(run)
    assert [str(make_header(decode_header(value))) for value in encoded] == SUBJECTS
    record_subjects(benchmark)


def test_rfc2047_encode_stdlib_header(benchmark):
    """email.header.Header(text, "utf-8", header_name=...).encode(): the same job (words
    of at most 75 characters, folded lines of at most 76), B for every value."""
    benchmark.group = "rfc2047 encode subjects"

    def run() -> list[str]:
        return [
            Header(text, "utf-8", header_name=HEADER_NAME).encode(linesep="\r\n")
            for text in SUBJECTS
        ]

    encoded = benchmark(run)
    assert [str(make_header(decode_header(value))) for value in encoded] == SUBJECTS
    record_subjects(benchmark)


ENCODED_SUBJECTS = [kernels.encode_words(text, "utf-8", OFFSET) for text in SUBJECTS]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_rfc2047_decode(benchmark, backend_name):
    benchmark.group = "rfc2047 decode subjects"
    decode = kernels.load_backend(backend_name).decode_words

    def run() -> list[str]:
        return [decode(value).text for value in ENCODED_SUBJECTS]

    assert benchmark(run) == SUBJECTS
    record_subjects(benchmark)


def test_rfc2047_decode_stdlib_make_header(benchmark):
    """str(make_header(decode_header(value))): the stdlib's way to a str.  It reports no
    problems and raises on an unknown charset, where decode_words keeps the word."""
    benchmark.group = "rfc2047 decode subjects"

    def run() -> list[str]:
        return [str(make_header(decode_header(value))) for value in ENCODED_SUBJECTS]

    assert benchmark(run) == SUBJECTS
    record_subjects(benchmark)
