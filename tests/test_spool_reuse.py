"""Spool files kept after delivery and reused for new messages (fastmta.spool.recycle):
complete() retires a file, release() frees it, the next commit takes it, recover()
tidies up after a crash, and a QueueManager delivering to `discard` runs the cycle.

The receive side here is a fresh Spool object per message (as a receive worker is a
process of its own): a pool lists free/ when it first needs a file, then again only
after a pause, so a fresh one sees what was freed a moment ago.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from helpers.delivery import deliver_until_idle
from helpers.spool_files import body_of, claimed, envelope, files

from fastmta.config import load_config
from fastmta.spool import ActiveMessage, QueueAdmin, RecipientState, Spool
from fastmta.spool.core import RecoveryReport
from fastmta.spool.fileformat import END_MARKER_LENGTH
from fastmta.spool.recycle import DEFAULT_MAX_SIZE


def inode(path: Path) -> int:
    return path.stat().st_ino


def inodes(root: Path, directory: str) -> set[int]:
    return {inode(root / directory / name) for name in files(root, directory)}


def receive(root: Path, body: bytes, *addresses: str, **spool_options: object) -> str:
    """Queue one message as a receive worker would: a Spool of its own."""
    spool = Spool(root, **spool_options)  # type: ignore[arg-type]
    try:
        return spool.enqueue(envelope(*addresses), body)
    finally:
        spool.close()


def exact_size(message: ActiveMessage) -> int:
    """The size of a message's file as written new: up to its end marker, no records."""
    return message.body_offset + message.body_length + END_MARKER_LENGTH


def deliver_all(spool: Spool) -> list[str]:
    """Claim and complete every queued message, as a delivery worker does."""
    done = []
    while (message := spool.claim_next()) is not None:
        done.append(message.queue_id)
        message.complete()
    return done


def recover(root: Path) -> RecoveryReport:
    """Spool.recover() as the master runs it at start-up, after a crash."""
    restarted = Spool(root)
    try:
        return restarted.recover()
    finally:
        restarted.close()


@pytest.fixture
def spool(tmp_path: Path):
    spool = Spool(tmp_path)
    yield spool
    spool.close()


def test_a_completed_message_goes_to_retired_and_out_of_the_queue(spool: Spool, tmp_path: Path) -> None:
    queue_id = receive(tmp_path, b"hello\r\n")
    number = inode(tmp_path / "incoming" / queue_id)
    claimed(spool).complete()
    assert files(tmp_path, "retired") == [queue_id]
    assert inode(tmp_path / "retired" / queue_id) == number
    assert files(tmp_path, "active") == [] and files(tmp_path, "free") == []
    assert QueueAdmin(spool).list() == []
    assert spool.claim_next() is None
    assert spool.pool.pending == 1


def test_release_passes_retired_files_on_to_free(spool: Spool, tmp_path: Path) -> None:
    queue_id = receive(tmp_path, b"hello\r\n")
    number = inode(tmp_path / "incoming" / queue_id)
    claimed(spool).complete()
    assert spool.pool.release() == 1
    assert files(tmp_path, "retired") == [] and files(tmp_path, "free") == [queue_id]
    assert inode(tmp_path / "free" / queue_id) == number
    assert spool.pool.pending == 0
    assert spool.pool.release() == 0  # nothing left to release


def test_any_process_releases_what_a_killed_worker_retired(spool: Spool, tmp_path: Path) -> None:
    queue_id = receive(tmp_path, b"hello\r\n")
    claimed(spool).complete()  # this worker is then killed before its release
    restarted = Spool(tmp_path)
    try:
        assert restarted.pool.pending == 0
        assert restarted.pool.release() == 1
    finally:
        restarted.close()
    assert files(tmp_path, "retired") == [] and files(tmp_path, "free") == [queue_id]


@pytest.mark.parametrize("old_size", [50_000, 10], ids=["old-longer", "old-shorter"])
def test_a_new_message_reuses_a_freed_file_and_reads_back_as_itself(spool: Spool, tmp_path: Path,
                                                                    old_size: int) -> None:
    receive(tmp_path, b"o" * old_size, "a@example.com", "b@example.com", "c@example.com")
    old = claimed(spool)
    old.mark_delivered([0])  # state records after the end marker: must not leak into the new file
    old.mark_failed([1], "550 5.1.1 no such user", remote="mx.example.com", when=1000.0)
    old.complete()
    spool.pool.release()
    (freed,) = files(tmp_path, "free")
    number = inode(tmp_path / "free" / freed)

    body = b"Subject: new\r\n\r\nthe new message\r\n" * 20
    new_id = receive(tmp_path, body, "x@example.net", "y@example.net")
    path = tmp_path / "incoming" / new_id
    assert inode(path) == number and files(tmp_path, "free") == []
    assert body_of(path) == body
    with claimed(spool) as message:
        assert message.queue_id == new_id
        assert message.read_body() == body
        assert [(r.address, r.state) for r in message.recipients] == [
            ("x@example.net", RecipientState.PENDING), ("y@example.net", RecipientState.PENDING)]
        assert message.delay_warned is None
        assert os.fstat(message.fileno()).st_size == exact_size(message)  # no old tail


def test_reuse_off_unlinks_completed_messages(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reuse_files=0)
    try:
        receive(tmp_path, b"hello\r\n")
        claimed(spool).complete()
        assert files(tmp_path, "active") == []
        assert files(tmp_path, "retired") == [] and files(tmp_path, "free") == []
        assert spool.pool.pending == 0 and spool.pool.release() == 0
    finally:
        spool.close()


def test_a_file_over_the_size_limit_is_unlinked_not_kept(spool: Spool, tmp_path: Path) -> None:
    big = receive(tmp_path, b"x" * (DEFAULT_MAX_SIZE + 1))
    small = receive(tmp_path, b"small\r\n")
    assert sorted(deliver_all(spool)) == sorted([big, small])
    assert files(tmp_path, "retired") == [small]
    spool.pool.release()
    assert files(tmp_path, "free") == [small]


def test_free_holds_at_most_the_limit_and_the_rest_are_unlinked(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reuse_files=3)
    try:
        for number in range(5):
            receive(tmp_path, b"message %d\r\n" % number)
        assert len(deliver_all(spool)) == 5
        assert len(files(tmp_path, "retired")) == 5
        assert spool.pool.release() == 3
        assert len(files(tmp_path, "free")) == 3 and files(tmp_path, "retired") == []
        receive(tmp_path, b"one more\r\n", reuse_files=0)  # not taking a free file
        deliver_all(spool)
        assert spool.pool.release() == 0  # free/ is full: unlinked
        assert len(files(tmp_path, "free")) == 3 and files(tmp_path, "retired") == []
        assert all(files(tmp_path, queue) == [] for queue in ("incoming", "active", "tmp"))
    finally:
        spool.close()


def test_recover_passes_retired_leftovers_on_to_free(spool: Spool, tmp_path: Path) -> None:
    for number in range(2):
        receive(tmp_path, b"message %d\r\n" % number)
    delivered = deliver_all(spool)  # then a crash: never released
    retired = inodes(tmp_path, "retired")
    report = recover(tmp_path)
    assert report.retired_to_free == 2
    assert files(tmp_path, "retired") == [] and files(tmp_path, "free") == sorted(delivered)
    assert inodes(tmp_path, "free") == retired


@pytest.mark.parametrize("kept_in", ["free", "retired"])
def test_recover_drops_a_kept_name_that_is_also_a_queue_file(spool: Spool, tmp_path: Path,
                                                             kept_in: str) -> None:
    receive(tmp_path, b"delivered\r\n")
    deliver_all(spool)
    spool.pool.release()
    (genuine,) = files(tmp_path, "free")
    queued = receive(tmp_path, b"still queued\r\n", reuse_files=0)
    queue_file = tmp_path / "incoming" / queued
    # A power loss undid the claim and the removal, but not the move to free/ or retired/:
    os.link(queue_file, tmp_path / kept_in / queued)
    assert queue_file.stat().st_nlink == 2
    report = recover(tmp_path)
    assert report.retired_to_free == 0
    assert files(tmp_path, "free") == [genuine] and files(tmp_path, "retired") == []
    assert files(tmp_path, "incoming") == [queued] and queue_file.stat().st_nlink == 1
    assert body_of(queue_file) == b"still queued\r\n"


def test_the_python_commit_path_reuses_a_free_file_too(spool: Spool, tmp_path: Path) -> None:
    receive(tmp_path, b"o" * 20_000)
    deliver_all(spool)
    spool.pool.release()
    (freed,) = files(tmp_path, "free")
    number = inode(tmp_path / "free" / freed)
    receiver = Spool(tmp_path)
    points: list[str] = []
    receiver.pause_hook = lambda point, queue_id: points.append(point)  # the Python path
    try:
        new_id = receiver.enqueue(envelope(), b"short\r\n")
    finally:
        receiver.close()
    assert points == ["written", "synced", "renamed", "dir_synced"]
    path = tmp_path / "incoming" / new_id
    assert inode(path) == number and files(tmp_path, "free") == []
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with claimed(spool) as message:
        assert message.queue_id == new_id and message.read_body() == b"short\r\n"
        assert os.fstat(message.fileno()).st_size == exact_size(message)  # no old tail


def test_two_receivers_sharing_free_never_hand_one_file_to_two_messages(spool: Spool,
                                                                        tmp_path: Path) -> None:
    for number in range(60):
        receive(tmp_path, b"old %d\r\n" % number + b"o" * (number * 37))
    deliver_all(spool)
    assert spool.pool.release() == 60
    freed = inodes(tmp_path, "free")
    receivers = [Spool(tmp_path), Spool(tmp_path)]
    start = threading.Barrier(2)
    sent: dict[str, bytes] = {}

    def receive_many(receiver: Spool, tag: int) -> None:
        start.wait(10)
        for number in range(50):
            body = b"receiver %d message %d\r\n" % (tag, number) * (1 + number % 7)
            sent[receiver.enqueue(envelope(), body)] = body

    threads = [threading.Thread(target=receive_many, args=(r, tag)) for tag, r in enumerate(receivers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for receiver in receivers:
        receiver.close()
    assert len(sent) == 100 and files(tmp_path, "incoming") == sorted(sent)
    queued = [(tmp_path / "incoming" / name).stat() for name in sent]
    assert len({info.st_ino for info in queued}) == 100  # every message a file of its own
    assert all(info.st_nlink == 1 for info in queued)
    reused = {info.st_ino for info in queued} & freed
    assert reused and len(reused) + len(files(tmp_path, "free")) == len(freed)  # none lost, none twice
    for queue_id, body in sent.items():
        with spool.claim(queue_id) as message:  # type: ignore[union-attr]
            assert message.read_body() == body


# --- end to end: a delivery worker -------------------------------------------------------------


def test_a_queue_manager_frees_the_files_it_delivers_and_new_mail_reuses_them(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    config = load_config(overrides={"spool": str(root), "hostname": "mx.test",
                                    "transport_map": "junk.test=discard"})
    for number in range(5):
        receive(root, b"Subject: msg %d\r\n\r\nhi\r\n" % number, "x@junk.test")
    first = inodes(root, "incoming")

    def deliver() -> int:
        return deliver_until_idle(config, root, clock=lambda: time.time() + 1)

    assert deliver() == 5
    assert files(root, "incoming") == [] and files(root, "active") == []
    assert files(root, "retired") == []  # run_until_idle released them
    assert inodes(root, "free") == first

    second = [receive(root, b"Subject: again %d\r\n\r\nhi\r\n" % number, "y@junk.test")
              for number in range(5)]
    assert files(root, "free") == [] and inodes(root, "incoming") == first
    assert [body_of(root / "incoming" / queue_id) for queue_id in second] == [
        b"Subject: again %d\r\n\r\nhi\r\n" % number for number in range(5)]
    assert deliver() == 5
    assert files(root, "incoming") == [] and inodes(root, "free") == first
