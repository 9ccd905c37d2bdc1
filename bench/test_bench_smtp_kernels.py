"""Throughput of the SMTP byte kernels: LineSplitter, DataReader, DotStuffer.

Each kernel runs on both backends over 1 MiB inputs, fed the way the server feeds
it (socket-sized chunks, every result taken).  `extra_info["MB/s"]` is megabytes
(10**6 octets) of input per second in the fastest round: the machine is shared, and
the fastest round is the one least disturbed by other load.  Results: bench/README.md.

    .venv/bin/python -m pytest bench/test_bench_smtp_kernels.py --benchmark-enable \\
        --benchmark-columns=min,mean,rounds --benchmark-sort=name

Without --benchmark-enable (the project default) each case runs once, as a smoke test.
"""

from __future__ import annotations

import base64
import random
import smtplib

import pytest

from fastmta import kernels

MIB = 1 << 20
BACKENDS = ("cython", "python")
# Typical sizes of one socket read: a few TCP segments, and asyncio's 64 KiB read buffer.
CHUNK_SIZES = (4096, 65536)

_VOCABULARY = (
    "the of and to in is that for it as was with be by on not this are or from at which but "
    "have an they you were her there been one all we their has would when if so no what up "
    "queue message delivery server relay mailbox sender recipient envelope header domain "
    "report invoice meeting tomorrow schedule attached please review thanks regards project"
)
_WORDS = _VOCABULARY.split()


def exactly(data: bytes, size: int) -> bytes:
    """`data` cut to `size` octets, still ending in CRLF (and no CR left bare by the cut)."""
    head = data[: size - 2]
    if head.endswith(b"\r"):
        head = head[:-1] + b"x"
    return head + b"\r\n"


def text_body(size: int = MIB, seed: int = 25) -> bytes:
    """A plain-text mail: headers, paragraphs wrapped at varied widths, quoted
    replies, blank lines, a few long lines and lines that start with a dot."""
    rng = random.Random(seed)
    lines = [
        b"From: Alice Example <alice@example.org>",
        b"To: Bob Example <bob@example.net>",
        b"Subject: quarterly report and the meeting tomorrow",
        b"Message-ID: <20261129.1234@example.org>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"",
    ]
    total = sum(len(line) + 2 for line in lines)
    while total < size:
        roll = rng.random()
        if roll < 0.08:
            line = b""
        elif roll < 0.11:
            line = b"." + rng.choice([b"", b".", b" dotted", b"hidden/path"])
        elif roll < 0.13:  # long, like a pasted URL or an HTML line
            line = " ".join(rng.choices(_WORDS, k=rng.randint(100, 160))).encode()[:990]
        else:
            width = rng.randint(20, 78)
            words = " ".join(rng.choices(_WORDS, k=width // 4)).encode()[:width]
            line = (b"> " + words) if roll < 0.25 else words
        lines.append(line)
        total += len(line) + 2
    return exactly(b"\r\n".join(lines) + b"\r\n", size)


def attachment_body(size: int = MIB, seed: int = 26) -> bytes:
    """A base64 attachment part: 76-column lines ending in CRLF (RFC 2045 6.8)."""
    raw = random.Random(seed).randbytes(size * 3 // 4)
    encoded = base64.encodebytes(raw).replace(b"\n", b"").decode()
    lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
    return exactly(("\r\n".join(lines) + "\r\n").encode(), size)


def command_stream(size: int = MIB, seed: int = 27) -> bytes:
    """Pipelined SMTP commands as a busy client sends them."""
    rng = random.Random(seed)
    out = []
    total = 0
    while total < size:
        user = rng.randint(1, 10**6)
        batch = [
            b"EHLO mail%d.sender.example" % rng.randint(1, 999),
            b"MAIL FROM:<user%d@sender.example> SIZE=%d BODY=8BITMIME"
            % (user, rng.randint(1, 10**7)),
            *(
                b"RCPT TO:<rcpt%d@example.net> NOTIFY=NEVER" % rng.randint(1, 10**6)
                for _ in range(rng.randint(1, 5))
            ),
            b"RSET",
            b"NOOP",
        ]
        for line in batch:
            out.append(line + b"\r\n")
            total += len(line) + 2
    return exactly(b"".join(out), size)


BODIES = {"text": text_body(), "base64": attachment_body()}
COMMANDS = command_stream()
WIRE = {name: kernels.load_backend("python").dot_stuff(body) for name, body in BODIES.items()}


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def record(benchmark, octets: int, group: str) -> None:
    benchmark.group = group
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["MB/s"] = round(octets / stats.stats.min / 1e6, 1)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_line_splitter(benchmark, backend_name, chunk_size):
    LineSplitter = kernels.load_backend(backend_name).LineSplitter
    chunks = chunks_of(COMMANDS, chunk_size)

    def run() -> int:
        splitter = LineSplitter(512)
        count = 0
        for chunk in chunks:
            splitter.feed(chunk)
            while splitter.next_line() is not None:
                count += 1
        return count

    assert benchmark(run) == COMMANDS.count(b"\n")
    record(benchmark, len(COMMANDS), f"LineSplitter commands chunk={chunk_size}")


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_line_split_stdlib_bytes_split(benchmark, chunk_size):
    """The standard library's fastest way to cut CRLF lines out of a stream, for reference.

    It does less than LineSplitter: `bytes.split(b"\r\n")` on the kept tail plus each
    feed, no flags (bare LF, bare CR, NUL), no line limit (an endless line is buffered
    whole), and lines with no tuple around them."""
    chunks = chunks_of(COMMANDS, chunk_size)

    def run() -> int:
        tail = b""
        count = 0
        for chunk in chunks:
            *lines, tail = (tail + chunk).split(b"\r\n")
            for _line in lines:
                count += 1
        return count

    assert benchmark(run) == COMMANDS.count(b"\n")
    record(benchmark, len(COMMANDS), f"stdlib bytes.split chunk={chunk_size}")


def test_line_loop_floor(benchmark):
    """The caller's loop alone, over (line, flags) tuples built in advance: no
    next_line() can be faster than this, which bounds the compiled/pure ratio."""
    ready = [(line, 0) for line in COMMANDS.split(b"\r\n")[:-1]] + [None]

    def run() -> int:
        next_line = iter(ready).__next__
        count = 0
        while next_line() is not None:
            count += 1
        return count

    assert benchmark(run) == COMMANDS.count(b"\n")
    record(benchmark, len(COMMANDS), "LineSplitter commands chunk=65536")


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("body", sorted(BODIES))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_data_reader(benchmark, backend_name, body, chunk_size):
    DataReader = kernels.load_backend(backend_name).DataReader
    chunks = chunks_of(WIRE[body] + b"QUIT\r\n", chunk_size)

    def run() -> int:
        reader = DataReader()
        received = 0
        for chunk in chunks:
            received += len(reader.feed(chunk))
            if reader.done:
                break
        return received

    assert benchmark(run) == len(BODIES[body])
    record(benchmark, len(WIRE[body]), f"DataReader {body} chunk={chunk_size}")


@pytest.mark.parametrize("body", sorted(BODIES))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_dot_stuffer(benchmark, backend_name, body):
    DotStuffer = kernels.load_backend(backend_name).DotStuffer
    chunks = chunks_of(BODIES[body], 65536)

    def run() -> int:
        stuffer = DotStuffer()
        sent = sum(len(stuffer.feed(chunk)) for chunk in chunks)
        return sent + len(stuffer.finish())

    assert benchmark(run) == len(WIRE[body])
    record(benchmark, len(BODIES[body]), f"DotStuffer {body} chunk=65536")


@pytest.mark.parametrize("body", sorted(BODIES))
def test_dot_stuff_stdlib_smtplib(benchmark, body):
    """What smtplib.SMTP.data() does to a bytes message, for reference.

    It only doubles leading dots (a regex) and adds the end marker: it does not
    normalise bare CR/LF for bytes, and it works on the whole message at once.
    """
    data = BODIES[body]

    def run() -> int:
        wire = smtplib._quote_periods(data)  # type: ignore[attr-defined]
        if not wire.endswith(b"\r\n"):
            wire += b"\r\n"
        return len(wire + b".\r\n")

    assert benchmark(run) == len(WIRE[body])
    record(benchmark, len(data), f"DotStuffer {body} chunk=65536")


@pytest.mark.parametrize("body", sorted(BODIES))
def test_data_read_stdlib_find_and_replace(benchmark, body):
    """The standard library's fastest way to find the end of DATA and undo dot-stuffing,
    for reference.

    It does less than DataReader: the whole message at once (no streaming, so no end
    marker split across feeds), `bytes.find` for CRLF.CRLF and one `bytes.replace` for
    the leading dots; no octet count for SIZE, no report of long lines or bare LF/CR."""
    wire = WIRE[body] + b"QUIT\r\n"

    def run() -> bytes:
        end = wire.find(b"\r\n.\r\n") + 2  # the body keeps its last CRLF
        return (b"\r\n" + wire[:end]).replace(b"\r\n..", b"\r\n.")[2:]

    assert benchmark(run) == BODIES[body]
    record(benchmark, len(WIRE[body]), f"DataReader {body} chunk=65536")
