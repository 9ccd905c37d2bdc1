"""The delivery side: claim by rename, per-recipient state that survives, defer/complete/release."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from helpers.spool_files import claimed, envelope, files

from fastmta.spool import RecipientState, Spool
from fastmta.spool.fileformat import parse_file


def states_on_disk(path: Path) -> list[RecipientState]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return [rcpt.state for rcpt in parse_file(fd).envelope.recipients]
    finally:
        os.close(fd)


@pytest.fixture
def spool(tmp_path: Path):
    spool = Spool(tmp_path)
    yield spool
    spool.close()


def test_claim_moves_the_oldest_message_to_active(spool: Spool, tmp_path: Path) -> None:
    first = spool.enqueue(envelope("a@example.com"), b"first\r\n")
    second = spool.enqueue(envelope("b@example.com"), b"second\r\n")
    message = claimed(spool)
    assert message.queue_id == first and message.source == "incoming"
    assert files(tmp_path, "active") == [first] and files(tmp_path, "incoming") == [second]
    assert message.envelope.recipients[0].address == "a@example.com"
    assert message.read_body() == b"first\r\n"
    data = (tmp_path / "active" / first).read_bytes()
    assert data[message.body_offset:message.body_offset + message.body_length] == b"first\r\n"
    message.complete()
    assert files(tmp_path, "active") == []
    assert claimed(spool).queue_id == second
    assert spool.claim_next() is None


def test_body_can_be_sent_with_sendfile(spool: Spool, tmp_path: Path) -> None:
    body = os.urandom(100_000)
    spool.enqueue(envelope(), body)
    with claimed(spool) as message:
        out = tmp_path / "out"
        with open(out, "wb") as handle:
            sent = os.sendfile(handle.fileno(), message.fileno(), message.body_offset, message.body_length)
        assert sent == len(body) and out.read_bytes() == body


def test_recipient_states_are_durable_and_partial(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.enqueue(envelope("a@x.example", "b@y.example", "c@z.example"), b"hi\r\n")
    message = claimed(spool)
    message.mark_delivered([0])
    message.mark_deferred([1], "451 4.7.1 greylisted", remote="mx.y.example", when=1000.0)
    message.mark_failed([2], "550 5.1.1 no such user", remote="mx.z.example", when=1001.0)
    path = tmp_path / "active" / queue_id
    assert states_on_disk(path) == [RecipientState.DELIVERED, RecipientState.DEFERRED, RecipientState.FAILED]
    assert message.pending_indices() == [1]
    message.defer(time.time() + 3600)
    assert files(tmp_path, "deferred") == [queue_id]
    # A new reader (another process) sees every detail.
    _, reread = spool.open_message(queue_id)
    with reread:
        b, c = reread.recipients[1], reread.recipients[2]
        assert (b.state, b.attempts, b.last_attempt, b.last_error, b.remote) == (
            RecipientState.DEFERRED, 1, 1000.0, "451 4.7.1 greylisted", "mx.y.example")
        assert (c.state, c.attempts, c.last_error) == (RecipientState.FAILED, 1, "550 5.1.1 no such user")


def test_done_recipients_cannot_change(spool: Spool) -> None:
    spool.enqueue(envelope("a@x.example", "b@x.example"), b"hi\r\n")
    with claimed(spool) as message:
        message.mark_delivered([0])
        with pytest.raises(ValueError, match="already delivered"):
            message.mark_failed([0], "550 too late")
        with pytest.raises(IndexError):
            message.mark_delivered([5])
        message.mark_failed([1], "550 no")
        assert message.all_done


def test_deferred_message_waits_for_its_mtime(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.enqueue(envelope(), b"hi\r\n")
    message = claimed(spool)
    message.mark_deferred([0], "421 4.4.2 timeout")
    next_try = time.time() + 600
    message.defer(next_try)
    assert (tmp_path / "deferred" / queue_id).stat().st_mtime == pytest.approx(next_try, abs=0.01)
    assert spool.claim_next() is None
    # Another process (no cached schedule) agrees it is not due yet ...
    other = Spool(tmp_path)
    assert other.claim_next() is None
    # ... and claims it once it is.
    retry = claimed(other, now=next_try + 1)
    assert retry.queue_id == queue_id and retry.source == "deferred"
    assert retry.recipients[0].attempts == 1
    retry.mark_delivered([0])
    retry.complete()
    other.close()


def test_a_stale_schedule_never_claims_a_message_early(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.enqueue(envelope(), b"hi\r\n")
    message = claimed(spool)
    message.defer(time.time() - 1)  # due now, and this spool remembers that
    other = Spool(tmp_path)
    retry = claimed(other)
    retry.defer(time.time() + 3600)  # another worker pushed it back meanwhile
    assert spool.claim_next() is None  # the stale entry is checked against the file's mtime
    assert files(tmp_path, "deferred") == [queue_id]
    other.close()


def test_new_and_retried_mail_alternate(spool: Spool, tmp_path: Path) -> None:
    retries = [spool.enqueue(envelope(), b"old\r\n") for _ in range(3)]
    for _ in retries:
        claimed(spool).defer(time.time() - 10)
    new = [spool.enqueue(envelope(), b"new\r\n") for _ in range(3)]
    fresh = Spool(tmp_path)
    order = []
    while (message := fresh.claim_next()) is not None:
        order.append(message.source)
        message.complete()
    assert order == ["incoming", "deferred"] * 3
    assert len(new) == 3
    fresh.close()


def test_release_puts_the_message_back(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.enqueue(envelope("a@x.example", "b@x.example"), b"hi\r\n")
    with claimed(spool) as message:
        message.mark_delivered([1])
    # leaving the block without complete/defer releases it
    assert files(tmp_path, "incoming") == [queue_id]
    again = claimed(spool)
    assert again.pending_indices() == [0]
    again.release()
    with pytest.raises(RuntimeError):
        again.complete()


def test_claim_by_id(spool: Spool, tmp_path: Path) -> None:
    first = spool.enqueue(envelope(), b"1\r\n")
    second = spool.enqueue(envelope(), b"2\r\n")
    message = spool.claim(second)
    assert message is not None and message.queue_id == second
    assert spool.claim(second) is None  # already ours
    message.complete()
    assert files(tmp_path, "incoming") == [first]


def test_a_corrupt_file_is_set_aside_and_the_next_one_claimed(spool: Spool, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    bad = spool.enqueue(envelope(), b"will be damaged\r\n")
    good = spool.enqueue(envelope(), b"fine\r\n")
    path = tmp_path / "incoming" / bad
    path.write_bytes(path.read_bytes()[:-5])
    message = claimed(spool)
    assert message.queue_id == good
    assert files(tmp_path, "corrupt") == [bad]
    assert bad in caplog.text and "corrupt" in caplog.text


def test_a_torn_record_is_cut_off_before_the_next_append(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.enqueue(envelope("a@x.example", "b@x.example"), b"hi\r\n")
    message = claimed(spool)
    message.mark_deferred([0], "451 first try")
    message.release()
    path = tmp_path / "incoming" / queue_id
    with open(path, "ab") as handle:
        handle.write(b'+0badc0de {"r":1,"s":"F","n"')  # a crash in the middle of an append
    again = claimed(spool)
    assert again.recipients[1].state is RecipientState.PENDING
    again.mark_failed([1], "550 5.1.1 unknown")
    again.mark_deferred([0], "451 second try")
    again.release()
    _, reread = spool.open_message(queue_id)
    with reread:
        a, b = reread.recipients
        assert (a.state, a.attempts, a.last_error) == (RecipientState.DEFERRED, 2, "451 second try")
        assert (b.state, b.last_error) == (RecipientState.FAILED, "550 5.1.1 unknown")
        assert reread.parsed.records_end == reread.parsed.file_end


def test_delay_warning_is_remembered(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.enqueue(envelope(), b"hi\r\n")
    message = claimed(spool)
    assert message.delay_warned is None
    message.mark_delay_warned(when=12345.0)
    message.defer(time.time() - 1)
    _, reread = spool.open_message(queue_id)
    with reread:
        assert reread.delay_warned == 12345.0


def _claim_until_empty(root: str, results: multiprocessing.Queue) -> None:
    spool = Spool(root)
    mine = []
    while (message := spool.claim_next()) is not None:
        mine.append(message.queue_id)
        message.mark_delivered([0])
        message.complete()
    results.put(mine)


def test_racing_processes_claim_each_message_exactly_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)

    async def fill() -> list[str]:
        async def one(i: int) -> str:
            writer = spool.new_message(envelope())
            writer.write(b"message %d\r\n" % i)
            await writer.commit()
            return writer.queue_id
        return list(await asyncio.gather(*(one(i) for i in range(500))))

    queued = asyncio.run(fill())
    spool.close()
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()
    workers = [context.Process(target=_claim_until_empty, args=(str(tmp_path), results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    claims = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(10)
    everything = [queue_id for batch in claims for queue_id in batch]
    assert sorted(everything) == sorted(queued)  # each exactly once
    assert sum(1 for batch in claims if batch) >= 2  # they really raced
    assert files(tmp_path, "active") == [] and files(tmp_path, "incoming") == []


def test_complete_can_be_made_durable(spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = spool.enqueue(envelope(), b"1\r\n")
    second = spool.enqueue(envelope(), b"2\r\n")
    real_fsync = os.fsync
    synced: list[str] = []

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    claimed(spool).complete()
    assert synced == []  # the common case costs no fsync
    claimed(spool).complete(sync=True)  # after a DSN was queued: a crash must not bring it back
    assert synced == [str(tmp_path / "active")]
    assert files(tmp_path, "active") == [] and first != second
