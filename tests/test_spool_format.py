"""Queue ids and the queue file format: round trips, and torn files rejected, never guessed at."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from fastmta.spool import (
    Envelope,
    Recipient,
    RecipientState,
    Spool,
    SpoolCorruptError,
    is_queue_id,
    new_queue_id,
    normalise_queue_id,
    queue_id_time,
)
from fastmta.spool.fileformat import encode_record, parse_file


def envelope(*addresses: str, sender: str = "alice@example.org") -> Envelope:
    return Envelope(sender=sender, recipients=[Recipient(a) for a in addresses or ("bob@example.com",)],
                    client_address="192.0.2.7", helo="client.example.org")


def parse_path(path: str | Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return parse_file(fd)
    finally:
        os.close(fd)


# --- queue ids ---------------------------------------------------------------------------


def test_queue_ids_are_fixed_width_filename_safe_and_increasing() -> None:
    ids = [new_queue_id()[0] for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(queue_id) == 20 and is_queue_id(queue_id) for queue_id in ids)


def test_queue_id_encodes_arrival_time() -> None:
    before = time.time()
    queue_id, arrival = new_queue_id()
    after = time.time()
    assert before - 0.001 <= queue_id_time(queue_id) <= after + 0.001
    assert queue_id_time(queue_id) == pytest.approx(arrival, abs=1e-6)


def test_later_ids_sort_after_earlier_ones_across_processes() -> None:
    first, _ = new_queue_id()
    time.sleep(0.002)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        child_ids = pool.map(_mint_one, range(2))
    assert all(first < child for child in child_ids)


def _mint_one(_: int) -> str:
    return new_queue_id()[0]


def _mint_into(count: int, results: multiprocessing.Queue) -> None:
    results.put([new_queue_id()[0] for _ in range(count)])


def test_ids_from_forked_processes_never_collide() -> None:
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()
    children = [context.Process(target=_mint_into, args=(3000, results)) for _ in range(4)]
    for child in children:
        child.start()
    mine = [new_queue_id()[0] for _ in range(3000)]
    batches = [results.get(timeout=30) for _ in children] + [mine]
    for child in children:
        child.join(10)
    everything = [queue_id for batch in batches for queue_id in batch]
    assert len(set(everything)) == len(everything)
    assert len({batch[0][11:] for batch in batches}) == 5  # the pid part differs per process


@pytest.mark.parametrize("text", ["../../etc/passwd", "", "1K1CKQVD3QVA72M0079", "1K1CKQVD3QVA72M0079FF",
                                  "1K1CKQVD3QVA72M0079I", "1K1CKQVD3QVA72M0079/"])
def test_is_queue_id_rejects_anything_else(text: str) -> None:
    assert not is_queue_id(text)
    assert normalise_queue_id(text) is None


def test_operator_spelling_of_an_id_is_normalised() -> None:
    queue_id, _ = new_queue_id()
    assert normalise_queue_id(f"  {queue_id.lower()}\n") == queue_id


# --- envelope round trip -------------------------------------------------------------------


ODD_ADDRESSES = [
    '"john smith"@example.com',
    '"quoted\\"quote"@example.com',
    "用户@例子.广告",
    "postmaster",
    "user@[IPv6:2001:db8::1]",
    "x\udcff@bad-utf8.example",  # surrogateescape'd byte from a client
    "tab\there@example.com",
]


def test_envelope_round_trips_odd_addresses_and_params(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    original = Envelope(
        sender="",
        recipients=[Recipient(address, {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": f"utf-8;{address}"})
                    for address in ODD_ADDRESSES] + [Recipient("plain@example.com")],
        mail_params={"body": "8BITMIME", "SMTPUTF8": None, "ENVID": "QQ+2B314", "RET": "HDRS"},
        client_address="2001:db8::25", client_name="mx.example.net", helo="[192.0.2.1]",
        protocol="UTF8SMTPS",
    )
    queue_id = spool.enqueue(original, b"Subject: hi\r\n\r\nbody\r\n")
    parsed = parse_path(tmp_path / "incoming" / queue_id)
    assert parsed.queue_id == queue_id
    assert parsed.arrival == pytest.approx(queue_id_time(queue_id), abs=1e-6)
    got = parsed.envelope
    assert got.sender == ""
    assert [r.address for r in got.recipients] == ODD_ADDRESSES + ["plain@example.com"]
    assert got.recipients[0].params == {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": f"utf-8;{ODD_ADDRESSES[0]}"}
    assert got.recipients[-1].params == {}
    # ESMTP keywords are case-insensitive (RFC 5321 4.1.2): stored upper-cased.
    assert got.mail_params == {"BODY": "8BITMIME", "SMTPUTF8": None, "ENVID": "QQ+2B314", "RET": "HDRS"}
    assert (got.client_address, got.client_name, got.helo, got.protocol) == (
        "2001:db8::25", "mx.example.net", "[192.0.2.1]", "UTF8SMTPS")
    assert all(r.state is RecipientState.PENDING and r.attempts == 0 for r in got.recipients)


def test_body_is_stored_byte_for_byte_and_located_by_offset(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    body = bytes(range(256)) * 50 + b"\r\n.\r\n" + b"\x00last"
    queue_id = spool.enqueue(envelope(), [body[:1000], body[1000:]])
    path = tmp_path / "incoming" / queue_id
    parsed = parse_path(path)
    assert parsed.body_length == len(body)
    assert path.read_bytes()[parsed.body_offset:parsed.body_offset + parsed.body_length] == body


def test_empty_envelope_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        Spool(tmp_path).new_message(Envelope(sender="a@b", recipients=[]))


# --- torn and damaged files ------------------------------------------------------------------


def test_a_file_cut_at_any_point_is_rejected(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queue_id = spool.enqueue(envelope("a@example.com", "b@example.com"), b"Subject: x\r\n\r\nhello\r\n")
    whole = (tmp_path / "incoming" / queue_id).read_bytes()
    torn = tmp_path / "torn"
    for length in range(len(whole)):
        torn.write_bytes(whole[:length])
        with pytest.raises(SpoolCorruptError):
            parse_path(torn)
    torn.write_bytes(whole)
    assert parse_path(torn).queue_id == queue_id


def test_a_zero_filled_tail_is_rejected(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queue_id = spool.enqueue(envelope(), b"x" * 5000)
    path = tmp_path / "incoming" / queue_id
    whole = path.read_bytes()
    path.write_bytes(whole[:4096] + b"\0" * (len(whole) - 4096))  # lost last block
    with pytest.raises(SpoolCorruptError, match="end marker"):
        parse_path(path)


def test_damaged_envelope_fails_the_header_checksum(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queue_id = spool.enqueue(envelope("bob@example.com"), b"hello\r\n")
    path = tmp_path / "incoming" / queue_id
    path.write_bytes(path.read_bytes().replace(b"bob@example.com", b"eve@example.com"))
    with pytest.raises(SpoolCorruptError, match="checksum"):
        parse_path(path)


@pytest.mark.parametrize("content", [b"", b"hello", b"FASTMTA2 00000000 0000000000000000\n{}",
                                     b"From alice Tue Nov 29\n\nmbox, not a queue file\n"])
def test_foreign_files_are_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "foreign"
    path.write_bytes(content)
    with pytest.raises(SpoolCorruptError):
        parse_path(path)


def test_damaged_body_is_caught_while_streaming_before_the_last_chunk(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    body = b"A" * 300_000
    queue_id = spool.enqueue(envelope(), body)
    path = tmp_path / "incoming" / queue_id
    data = bytearray(path.read_bytes())
    parsed = parse_path(path)
    data[parsed.body_offset + 10] = ord("B")
    path.write_bytes(bytes(data))
    _, message = spool.open_message(queue_id)
    with message:
        handed_out = 0
        with pytest.raises(SpoolCorruptError, match="body checksum"):
            for chunk in message.iter_body(chunk_size=65536):
                handed_out += len(chunk)
        assert handed_out < len(body)  # the end was never handed out


# --- state records ---------------------------------------------------------------------------


def test_records_after_the_end_marker_update_state_and_torn_ones_are_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queue_id = spool.enqueue(envelope("a@example.com", "b@example.com"), b"hi\r\n")
    path = tmp_path / "incoming" / queue_id
    good = encode_record({"r": 1, "s": "R", "n": 1, "t": 1000.0, "e": "451 4.7.1 greylisted", "m": "mx1"})
    newer = encode_record({"r": 1, "s": "F", "n": 2, "t": 2000.0, "e": "550 5.1.1 no such user"})
    with open(path, "ab") as handle:
        handle.write(good)
    for torn in (newer[:-1], newer[:20], newer.replace(b"no such", b"no_such")):
        data = path.read_bytes()
        path.write_bytes(data + torn)
        rcpt = parse_path(path).envelope.recipients[1]
        assert (rcpt.state, rcpt.attempts, rcpt.last_error, rcpt.remote) == (
            RecipientState.DEFERRED, 1, "451 4.7.1 greylisted", "mx1")
        path.write_bytes(data)
    path.write_bytes(path.read_bytes() + newer)
    parsed = parse_path(path)
    assert parsed.envelope.recipients[0].state is RecipientState.PENDING
    rcpt = parsed.envelope.recipients[1]
    assert (rcpt.state, rcpt.attempts, rcpt.last_attempt, rcpt.last_error, rcpt.remote) == (
        RecipientState.FAILED, 2, 2000.0, "550 5.1.1 no such user", None)
    assert parsed.records_end == parsed.file_end == path.stat().st_size


def test_a_state_byte_and_a_record_combine_to_the_later_state(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queue_id = spool.enqueue(envelope("a@example.com"), b"hi\r\n")
    path = tmp_path / "incoming" / queue_id
    parsed = parse_path(path)
    data = bytearray(path.read_bytes())
    data[parsed.state_offset] = ord("D")  # delivered (in place) ...
    data += encode_record({"r": 0, "s": "R", "n": 1, "t": 5.0, "e": "451 later"})  # ... after a deferral
    path.write_bytes(bytes(data))
    rcpt = parse_path(path).envelope.recipients[0]
    assert rcpt.state is RecipientState.DELIVERED
    assert rcpt.attempts == 1 and rcpt.last_error == "451 later"


def test_bad_state_byte_is_rejected(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queue_id = spool.enqueue(envelope(), b"hi\r\n")
    path = tmp_path / "incoming" / queue_id
    data = bytearray(path.read_bytes())
    data[parse_path(path).state_offset] = ord("?")
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolCorruptError, match="state byte"):
        parse_path(path)
