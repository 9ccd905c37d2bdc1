"""The queue file format, version 1: encoding and parsing (no directories, no moves).

Layout (docs/spool.md has the full description and the reasoning):

    FASTMTA1 <envelope length: 8 hex> <body length: 16 hex>\\n     35-byte preamble
    <envelope: one line of ASCII JSON>\\n
    <state vector: one byte per recipient, P R D F>\\n
    <body: the message exactly as it will be delivered>
    FASTMTA1-END <header crc32: 8 hex> <body crc32: 8 hex>\\n        31-byte end marker
    +<crc32: 8 hex> <record: one line of ASCII JSON>\\n              zero or more state records

Invariants:
- A file is accepted only if the preamble, the envelope, the newline after the state
  vector and the end marker are all where the lengths say, and the header crc32
  (preamble + envelope line) matches.  Anything else raises SpoolCorruptError: a torn
  or foreign file is rejected, never guessed at.
- The body is never read to parse a file; its crc32 is checked while streaming it.
- After the end marker, records are read up to the first one that is not complete
  (no newline) or whose crc32 does not match; that one and anything after it is a
  torn append and is ignored.  `records_end` tells the owner where to append next.
- A recipient's state is the higher-ranked of its state byte and its last record
  (envelope.RANK); every update moves a state forward, so a crash that keeps either,
  both or neither of the two writes leaves the old state or the new one.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastmta.spool.envelope import RANK, Envelope, Recipient, RecipientState
from fastmta.spool.errors import SpoolCorruptError

__all__ = [
    "END_MARKER_LENGTH",
    "FORMAT_VERSION",
    "PREAMBLE_LENGTH",
    "ParsedFile",
    "encode_end_marker",
    "encode_envelope",
    "encode_preamble",
    "encode_record",
    "iter_body",
    "parse_file",
]

FORMAT_VERSION = 1
PREAMBLE_LENGTH = 35
END_MARKER_LENGTH = 31
READ_SIZE = 65536  # first read of a file: the whole file for typical messages
_MAX_ENVELOPE = 0xFFFFFFFF
_PREAMBLE_RE = re.compile(rb"FASTMTA1 ([0-9a-f]{8}) ([0-9a-f]{16})\n")
_END_RE = re.compile(rb"FASTMTA1-END ([0-9a-f]{8}) ([0-9a-f]{8})\n")
_STATE_BYTES = {ord(state.value): state for state in RecipientState}
_NEWLINE = 0x0A

# ASCII-only JSON everywhere: escapes keep any str (even a lone surrogate from an
# undecodable client byte) representable, and the file stays one line per part.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)
_decode_json = json.JSONDecoder().decode
_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # C, as json.dumps uses


def _json_params(params: dict[str, str | None]) -> str:
    if not params:
        return "{}"
    quote = _quote
    parts = []
    for key, value in params.items():
        parts.append(quote(key.upper()) + ":" + ("null" if value is None else quote(value)))
    return "{" + ",".join(parts) + "}"


def encode_envelope(envelope: Envelope, queue_id: str, arrival: float) -> bytes:
    """The envelope line (without its newline): a JSON object, built by hand because
    this runs for every message and json.dumps costs several times more."""
    if not envelope.recipients:
        raise ValueError("an envelope needs at least one recipient")
    quote = _quote
    recipients = ",".join([f"[{quote(rcpt.address)},{_json_params(rcpt.params)}]"
                           for rcpt in envelope.recipients])
    text = (
        f'{{"id":{quote(queue_id)},"arrival":{float(arrival)!r},'
        f'"client":{quote(envelope.client_address)},"client_name":{quote(envelope.client_name)},'
        f'"helo":{quote(envelope.helo)},"protocol":{quote(envelope.protocol)},'
        f'"sender":{quote(envelope.sender)},"params":{_json_params(envelope.mail_params)},'
        f'"rcpts":[{recipients}]}}'
    )
    encoded = text.encode("ascii")
    if len(encoded) > _MAX_ENVELOPE:
        raise ValueError("envelope too large for format 1 (over 4 GiB)")
    return encoded


def encode_preamble(envelope_length: int, body_length: int) -> bytes:
    return b"FASTMTA1 %08x %016x\n" % (envelope_length, body_length)


def encode_end_marker(header_crc: int, body_crc: int) -> bytes:
    return b"FASTMTA1-END %08x %08x\n" % (header_crc, body_crc)


def encode_record(fields: dict[str, Any]) -> bytes:
    """One state record line: checksummed, newline-terminated."""
    payload = _ENCODER.encode(fields).encode("ascii")
    return b"+%08x %s\n" % (zlib.crc32(payload), payload)


@dataclass(slots=True)
class ParsedFile:
    """A queue file's envelope and the offsets of its parts."""

    queue_id: str
    arrival: float
    envelope: Envelope
    state_offset: int  # offset of the first state byte
    body_offset: int
    body_length: int
    body_crc: int
    records_end: int  # where the valid records end: the next append goes here
    file_end: int  # bytes in the file when it was read (> records_end: a torn tail)
    delay_warned: float | None  # when a delay DSN was sent, if one was


class _Reader:
    """Reads a file by pread, keeping the prefix read so far."""

    __slots__ = ("data", "eof", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = os.pread(fd, READ_SIZE, 0)
        self.eof = len(self.data) < READ_SIZE

    def need(self, end: int) -> None:
        """Make sure bytes [0, end) are loaded, or fail as truncated."""
        while len(self.data) < end and not self.eof:
            chunk = os.pread(self.fd, max(end - len(self.data), READ_SIZE), len(self.data))
            if not chunk:
                self.eof = True
            self.data += chunk
        if len(self.data) < end:
            raise SpoolCorruptError(f"file is truncated: {len(self.data)} bytes, expected at least {end}")

    def tail(self, start: int) -> bytes:
        """Bytes from `start` to the end of the file (the end marker and the records)."""
        if self.eof and start <= len(self.data):
            return self.data[start:]
        chunks: list[bytes] = []
        offset = start
        while True:
            chunk = os.pread(self.fd, READ_SIZE, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)


def parse_file(fd: int) -> ParsedFile:
    """Parse the queue file open on `fd`; raise SpoolCorruptError if it is not whole."""
    reader = _Reader(fd)
    match = _PREAMBLE_RE.match(reader.data)
    if match is None:
        if reader.data.startswith(b"FASTMTA") and not reader.data.startswith(b"FASTMTA1 "):
            raise SpoolCorruptError(
                "written by another fastmta version (format is not 1); run that version to deliver it"
            )
        raise SpoolCorruptError("not a fastmta queue file (bad or missing first line)")
    envelope_end = PREAMBLE_LENGTH + int(match.group(1), 16)
    body_length = int(match.group(2), 16)
    reader.need(envelope_end + 1)
    if reader.data[envelope_end] != _NEWLINE:
        raise SpoolCorruptError("envelope line is not terminated where the preamble says")
    try:
        document = _decode_json(reader.data[PREAMBLE_LENGTH:envelope_end].decode("ascii"))
        queue_id, arrival, envelope = _envelope_from(document)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SpoolCorruptError(f"envelope is not valid: {exc}") from None
    count = len(envelope.recipients)
    state_offset = envelope_end + 1
    body_offset = state_offset + count + 1
    reader.need(body_offset)
    if reader.data[body_offset - 1] != _NEWLINE:
        raise SpoolCorruptError("state vector is not terminated where the envelope says")
    recipients = envelope.recipients
    for index, byte in enumerate(reader.data[state_offset:state_offset + count]):
        state = _STATE_BYTES.get(byte)
        if state is None:
            raise SpoolCorruptError(f"bad state byte {bytes([byte])!r} for recipient {index}")
        recipients[index].state = state
    marker_offset = body_offset + body_length
    tail = reader.tail(marker_offset)
    end = _END_RE.match(tail)
    if end is None:
        raise SpoolCorruptError(
            f"no end marker at offset {marker_offset}: the file is torn or truncated"
        )
    header_crc = zlib.crc32(reader.data[:envelope_end + 1])
    if int(end.group(1), 16) != header_crc:
        raise SpoolCorruptError("header checksum does not match: the envelope is damaged")
    records_start = marker_offset + END_MARKER_LENGTH
    records_length, delay_warned = _apply_records(tail, END_MARKER_LENGTH, recipients)
    return ParsedFile(
        queue_id=queue_id,
        arrival=arrival,
        envelope=envelope,
        state_offset=state_offset,
        body_offset=body_offset,
        body_length=body_length,
        body_crc=int(end.group(2), 16),
        records_end=records_start + records_length,
        file_end=marker_offset + len(tail),
        delay_warned=delay_warned,
    )


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _params(value: Any, name: str) -> dict[str, str | None]:
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be an object")
    for key, item in value.items():
        if item is not None and not isinstance(item, str):
            raise TypeError(f"{name}[{key}] must be a string or null")
    return value


def _envelope_from(document: Any) -> tuple[str, float, Envelope]:
    if not isinstance(document, dict):
        raise TypeError("envelope must be a JSON object")
    arrival = document["arrival"]
    if not isinstance(arrival, (int, float)):
        raise TypeError("arrival must be a number")
    rcpts = document["rcpts"]
    if not isinstance(rcpts, list) or not rcpts:
        raise TypeError("rcpts must be a non-empty list")
    recipients = []
    for item in rcpts:
        address, params = item
        recipients.append(Recipient(_text(address, "recipient"), _params(params, "recipient params")))
    envelope = Envelope(
        sender=_text(document["sender"], "sender"),
        recipients=recipients,
        mail_params=_params(document["params"], "params"),
        client_address=_text(document["client"], "client"),
        client_name=_text(document.get("client_name", ""), "client_name"),
        helo=_text(document["helo"], "helo"),
        protocol=_text(document["protocol"], "protocol"),
    )
    return _text(document["id"], "id"), float(arrival), envelope


def _apply_records(tail: bytes, start: int, recipients: list[Recipient]) -> tuple[int, float | None]:
    """Apply the valid records in tail[start:]; return (their length, delay_warned)."""
    position = start
    delay_warned = None
    while True:
        newline = tail.find(b"\n", position)
        if newline < 0:
            break  # incomplete last record: a torn append
        line = tail[position:newline]
        if len(line) < 11 or line[0] != 0x2B or line[9] != 0x20:  # "+", " "
            break
        payload = line[10:]
        try:
            if int(line[1:9], 16) != zlib.crc32(payload):
                break
            record = _decode_json(payload.decode("ascii"))
            if "r" in record:
                _apply_recipient_record(record, recipients)
            elif "w" in record:
                delay_warned = float(record["w"])
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            break  # a record this version cannot read ends the valid run, like a torn one
        position = newline + 1
    return position - start, delay_warned


def _apply_recipient_record(record: dict[str, Any], recipients: list[Recipient]) -> None:
    index = record["r"]
    if not isinstance(index, int) or not 0 <= index < len(recipients):
        raise IndexError("record names no recipient")
    state = RecipientState(record["s"])
    # A record carries all the details of the attempt it describes; check them all
    # before changing anything, so a record that is not valid changes nothing.
    attempts = int(record.get("n", 0))
    moment = record.get("t")
    last_attempt = float(moment) if moment is not None else None
    last_error = _optional_text(record.get("e"), "e")
    remote = _optional_text(record.get("m"), "m")
    rcpt = recipients[index]
    if RANK[state] >= RANK[rcpt.state]:
        rcpt.state = state
    rcpt.attempts, rcpt.last_attempt, rcpt.last_error, rcpt.remote = attempts, last_attempt, last_error, remote


def _optional_text(value: Any, name: str) -> str | None:
    return None if value is None else _text(value, name)


def iter_body(fd: int, parsed: ParsedFile, chunk_size: int = 262144,
              verify: bool = True) -> Iterator[bytes]:
    """Yield the body in chunks; with `verify`, raise SpoolCorruptError at the end
    (before the last chunk is yielded) if its crc32 does not match the end marker."""
    offset = parsed.body_offset
    remaining = parsed.body_length
    crc = 0
    pending = b""
    while remaining > 0:
        chunk = os.pread(fd, min(chunk_size, remaining), offset)
        if not chunk:
            raise SpoolCorruptError("body is shorter than the preamble says")
        offset += len(chunk)
        remaining -= len(chunk)
        if verify:
            crc = zlib.crc32(chunk, crc)
        if pending:
            yield pending
        pending = chunk
    if verify and crc != parsed.body_crc:
        raise SpoolCorruptError("body checksum does not match: the message content is damaged")
    if pending:
        yield pending
