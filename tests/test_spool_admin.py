"""Operator functions behind `fastmta queue`: list, show, hold, release, delete, flush, stats."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers.spool_files import envelope, files

from fastmta.spool import (
    MessageBusyError,
    MessageNotFoundError,
    QueueAdmin,
    Spool,
    SpoolError,
)


@pytest.fixture
def spool(tmp_path: Path):
    spool = Spool(tmp_path)
    yield spool
    spool.close()


@pytest.fixture
def admin(spool: Spool) -> QueueAdmin:
    return QueueAdmin(spool)


def deferred_message(spool: Spool, next_try: float) -> str:
    queue_id = spool.enqueue(envelope("a@x.example", "b@y.example"), b"Subject: later\r\n\r\nx\r\n")
    message = spool.claim(queue_id)
    assert message is not None
    message.mark_delivered([0])
    message.mark_deferred([1], "451 4.7.1 try again later", remote="mx.y.example", when=1000.0)
    message.defer(next_try)
    return queue_id


def test_list_shows_every_queue_with_states_and_errors(spool: Spool, admin: QueueAdmin, tmp_path: Path) -> None:
    new = spool.enqueue(envelope("c@z.example", sender=""), b"x" * 1234)
    next_try = time.time() + 900
    later = deferred_message(spool, next_try)
    (tmp_path / "corrupt" / "garbage").write_bytes(b"not a queue file")
    entries = {entry.queue_id: entry for entry in admin.list()}
    assert set(entries) == {new, later, "garbage"}
    fresh = entries[new]
    assert (fresh.queue, fresh.size, fresh.sender, fresh.next_try, fresh.last_error) == (
        "incoming", 1234, "", None, None)
    retry = entries[later]
    assert retry.queue == "deferred"
    assert retry.next_try == pytest.approx(next_try, abs=0.01)
    assert retry.last_error == "451 4.7.1 try again later"
    assert [(r.address, r.state.name) for r in retry.recipients] == [
        ("a@x.example", "DELIVERED"), ("b@y.example", "DEFERRED")]
    assert entries["garbage"].queue == "corrupt"
    assert "not a fastmta queue file" in (entries["garbage"].problem or "")
    # --json output is plain JSON
    document = json.loads(json.dumps([entry.to_dict() for entry in admin.list()]))
    assert {item["queue_id"] for item in document} == {new, later, "garbage"}
    assert document[[d["queue_id"] for d in document].index(later)]["recipients"][1]["state"] == "deferred"


def test_list_is_in_arrival_order(spool: Spool, admin: QueueAdmin) -> None:
    ids = [spool.enqueue(envelope(), b"%d\r\n" % i) for i in range(5)]
    spool.claim(ids[2]).defer(time.time() + 60)  # type: ignore[union-attr]
    assert [entry.queue_id for entry in admin.list()] == ids


def test_show_finds_a_message_anywhere(spool: Spool, admin: QueueAdmin) -> None:
    queue_id = spool.enqueue(envelope(), b"hello\r\n")
    assert admin.show(queue_id.lower()).queue == "incoming"
    message = spool.claim(queue_id)
    assert admin.show(queue_id).queue == "active"
    assert message is not None
    message.release()
    queue, handle = spool.open_message(queue_id)
    with handle:
        assert queue == "incoming" and handle.read_body() == b"hello\r\n"
    with pytest.raises(MessageNotFoundError, match="queue list"):
        admin.show("0" * 20)
    with pytest.raises(MessageNotFoundError, match="not a queue id"):
        admin.show("../../etc/passwd")


def test_hold_and_release(spool: Spool, admin: QueueAdmin, tmp_path: Path) -> None:
    waiting = deferred_message(spool, time.time() + 3600)
    assert admin.hold(waiting) == "deferred"
    assert files(tmp_path, "hold") == [waiting]
    assert admin.hold(waiting) == "hold"  # holding twice is harmless
    assert spool.claim_next(now=time.time() + 7200) is None  # held mail is not delivered
    with pytest.raises(SpoolError, match="on hold"):
        admin.flush(waiting)
    admin.release(waiting)
    assert files(tmp_path, "incoming") == [waiting]
    with pytest.raises(SpoolError, match="not on hold"):
        admin.release(waiting)
    message = spool.claim_next()
    assert message is not None and message.queue_id == waiting
    assert message.pending_indices() == [1]  # its state survived the trip


def test_hold_and_delete_refuse_a_message_being_delivered(spool: Spool, admin: QueueAdmin, tmp_path: Path) -> None:
    queue_id = spool.enqueue(envelope(), b"hello\r\n")
    message = spool.claim_next()
    assert message is not None
    with pytest.raises(MessageBusyError, match="being delivered right now"):
        admin.hold(queue_id)
    with pytest.raises(MessageBusyError, match=f"fastmta queue delete {queue_id}"):
        admin.delete(queue_id)
    assert files(tmp_path, "active") == [queue_id]
    message.defer(time.time() + 60)
    assert admin.delete(queue_id) == "deferred"
    assert files(tmp_path, "deferred") == []


def test_delete_and_delete_all(spool: Spool, admin: QueueAdmin, tmp_path: Path) -> None:
    ids = [spool.enqueue(envelope(), b"%d\r\n" % i) for i in range(4)]
    admin.hold(ids[0])
    deferred_id = deferred_message(spool, time.time() + 60)
    busy = spool.claim(ids[3])
    assert admin.delete(ids[1]) == "incoming"
    with pytest.raises(MessageNotFoundError):
        admin.delete(ids[1])
    assert admin.delete_all() == (3, 1)  # ids[0] held, ids[2], the deferred one; ids[3] is active
    assert files(tmp_path, "incoming") == files(tmp_path, "hold") == files(tmp_path, "deferred") == []
    assert busy is not None and files(tmp_path, "active") == [ids[3]]
    assert deferred_id not in files(tmp_path, "deferred")


def test_flush_makes_deferred_mail_due_now(spool: Spool, admin: QueueAdmin, tmp_path: Path) -> None:
    first = deferred_message(spool, time.time() + 3600)
    second = deferred_message(spool, time.time() + 7200)
    assert spool.claim_next() is None
    assert admin.flush(first) == 1
    assert files(tmp_path, "incoming") == [first] and files(tmp_path, "deferred") == [second]
    assert admin.flush() == 1
    claimed = []
    while (message := spool.claim_next()) is not None:
        claimed.append(message.queue_id)
        message.complete()
    assert sorted(claimed) == sorted([first, second])
    with pytest.raises(MessageNotFoundError):
        admin.flush(first)


def test_stats_counts_and_sizes_per_queue(spool: Spool, admin: QueueAdmin, tmp_path: Path) -> None:
    spool.enqueue(envelope(), b"a" * 1000)
    spool.enqueue(envelope(), b"b" * 2000)
    deferred_message(spool, time.time() + 60)
    stats = admin.stats()
    assert set(stats) == {"tmp", "incoming", "active", "deferred", "hold", "corrupt"}
    assert stats["incoming"].count == 2 and stats["deferred"].count == 1 and stats["hold"].count == 0
    on_disk = sum(path.stat().st_size for path in (tmp_path / "incoming").iterdir())
    assert stats["incoming"].bytes == on_disk > 3000
