"""Crash tests: a real process is SIGKILLed between write, fsync and rename (or mid-delivery),
then recover() runs.  Nothing acknowledged is lost, nothing torn is parsed, tmp/ is emptied."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from helpers.spool_files import body_of, envelope, files

from fastmta.spool import RecipientState, Spool

FOREVER = 120.0


def kill_when_paused(target: Callable[..., None], *args: Any) -> list[tuple[str, str]]:
    """Run target(*args, conn) in a forked child; SIGKILL it once it reports "paused".
    Returns every (event, queue id) the child reported."""
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=target, args=(*args, child_end))
    child.start()
    events: list[tuple[str, str]] = []
    try:
        while True:
            assert parent_end.poll(30), f"child reported {events} and then nothing"
            event = parent_end.recv()
            events.append(event)
            if event[0] == "paused":
                break
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
    finally:
        if child.is_alive():
            child.kill()
    return events


def pause(conn: Connection, queue_id: str) -> None:
    conn.send(("paused", queue_id))
    time.sleep(FOREVER)


# --- the receive side ------------------------------------------------------------------------

ACKED_BODY = b"Subject: acknowledged\r\n\r\nthe 250 was sent for this one\r\n"
IN_FLIGHT_BODY = b"Subject: in flight\r\n\r\n" + b"still being received\r\n" * 20_000  # ~440 KB: spills


def _receive_then_crash(root: str, stop_at: str, conn: Connection) -> None:
    spool = Spool(root)

    async def main() -> None:
        writer = spool.new_message(envelope())
        writer.write(ACKED_BODY)
        await writer.commit()
        conn.send(("acknowledged", writer.queue_id))

        def hook(point: str, queue_id: str) -> None:
            if point == stop_at:
                pause(conn, queue_id)

        spool.pause_hook = hook
        writer = spool.new_message(envelope())
        for start in range(0, len(IN_FLIGHT_BODY), 65536):
            writer.write(IN_FLIGHT_BODY[start:start + 65536])
        if stop_at == "spilled":
            pause(conn, writer.queue_id)
        await writer.commit()
        conn.send(("acknowledged", writer.queue_id))  # never reached

    asyncio.run(main())


@pytest.mark.parametrize("stop_at", ["spilled", "written", "synced", "renamed", "dir_synced"])
def test_kill_during_commit_loses_nothing_acknowledged(tmp_path: Path, stop_at: str) -> None:
    Spool(tmp_path).close()
    events = kill_when_paused(_receive_then_crash, str(tmp_path), stop_at)
    acknowledged = [queue_id for event, queue_id in events if event == "acknowledged"]
    in_flight = events[-1][1]
    assert len(acknowledged) == 1

    report = Spool(tmp_path).recover()

    assert files(tmp_path, "tmp") == []
    assert body_of(tmp_path / "incoming" / acknowledged[0]) == ACKED_BODY
    if stop_at in ("spilled", "written", "synced"):
        # Never renamed: never acknowledged, removed.
        assert report.tmp_removed == 1
        assert files(tmp_path, "incoming") == acknowledged
    else:
        # Renamed but the client got no 250: it is complete (data fsynced before the
        # rename), so it is delivered; the client may send it again (RFC 1047 window).
        assert report.tmp_removed == 0
        assert files(tmp_path, "incoming") == sorted([*acknowledged, in_flight])
        assert body_of(tmp_path / "incoming" / in_flight) == IN_FLIGHT_BODY
    assert files(tmp_path, "corrupt") == []


# --- the delivery side -----------------------------------------------------------------------


def _deliver_then_crash(root: str, crash_in: str, conn: Connection) -> None:
    spool = Spool(root)
    message = spool.claim_next()
    assert message is not None
    message.mark_delivered([0])
    message.mark_deferred([1], "451 4.7.1 greylisted", when=1000.0)
    if crash_in == "delivery":
        pause(conn, message.queue_id)
    if crash_in == "append":
        real_pwrite = os.pwrite

        def torn_pwrite(fd: int, data: bytes, offset: int) -> int:
            real_pwrite(fd, data[: len(data) // 2], offset)
            pause(conn, message.queue_id)
            return 0

        os.pwrite = torn_pwrite  # type: ignore[assignment]
        message.mark_failed([2], "550 5.1.1 unknown user")
    if crash_in == "defer":
        def stuck_rename(source: str, target: str) -> None:
            pause(conn, message.queue_id)

        os.rename = stuck_rename  # type: ignore[assignment]
        message.defer(time.time() + 3600)


def _queue_three_recipients(root: Path) -> str:
    spool = Spool(root)
    queue_id = spool.enqueue(envelope("a@x.example", "b@y.example", "c@z.example"), b"hello\r\n")
    spool.close()
    return queue_id


def test_kill_mid_delivery_redelivers_only_what_was_not_done(tmp_path: Path) -> None:
    queue_id = _queue_three_recipients(tmp_path)
    kill_when_paused(_deliver_then_crash, str(tmp_path), "delivery")
    assert files(tmp_path, "active") == [queue_id]
    spool = Spool(tmp_path)
    report = spool.recover()
    assert (report.to_incoming, report.to_deferred) == (1, 0)
    message = spool.claim_next()
    assert message is not None and message.queue_id == queue_id
    assert message.pending_indices() == [1, 2]
    assert message.recipients[1].attempts == 1 and message.recipients[1].last_error == "451 4.7.1 greylisted"


def test_kill_in_the_middle_of_a_state_append_keeps_the_old_state(tmp_path: Path) -> None:
    queue_id = _queue_three_recipients(tmp_path)
    kill_when_paused(_deliver_then_crash, str(tmp_path), "append")
    spool = Spool(tmp_path)
    spool.recover()
    message = spool.claim_next()
    assert message is not None and message.queue_id == queue_id
    assert [r.state for r in message.recipients] == [
        RecipientState.DELIVERED, RecipientState.DEFERRED, RecipientState.PENDING]
    assert message.parsed.file_end > message.parsed.records_end  # the torn half is there, ignored
    message.mark_failed([2], "550 5.1.1 unknown user")
    message.release()
    _, reread = spool.open_message(queue_id)
    with reread:
        assert reread.recipients[2].state is RecipientState.FAILED
        assert reread.parsed.file_end == reread.parsed.records_end


def test_kill_during_defer_keeps_the_schedule(tmp_path: Path) -> None:
    queue_id = _queue_three_recipients(tmp_path)
    kill_when_paused(_deliver_then_crash, str(tmp_path), "defer")
    report = Spool(tmp_path).recover()
    assert (report.to_incoming, report.to_deferred) == (0, 1)
    assert files(tmp_path, "deferred") == [queue_id]
    assert (tmp_path / "deferred" / queue_id).stat().st_mtime > time.time() + 3000


# --- damaged files at start-up ----------------------------------------------------------------


def test_recover_moves_unparseable_files_to_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    torn_active = spool.enqueue(envelope(), b"x" * 10_000)
    torn_incoming = spool.enqueue(envelope(), b"y" * 10_000)
    good = spool.enqueue(envelope(), b"fine\r\n")
    os.rename(tmp_path / "incoming" / torn_active, tmp_path / "active" / torn_active)
    for queue, queue_id in (("active", torn_active), ("incoming", torn_incoming)):
        path = tmp_path / queue / queue_id
        path.write_bytes(path.read_bytes()[:5000])
    (tmp_path / "active" / "stray.swp").write_bytes(b"an editor's leftovers")
    with caplog.at_level(logging.WARNING, logger="fastmta.spool"):
        report = Spool(tmp_path).recover(verify_queued=True)
    assert report.to_corrupt == 3
    assert files(tmp_path, "corrupt") == sorted([torn_active, torn_incoming, "stray.swp"])
    assert files(tmp_path, "incoming") == [good] and files(tmp_path, "active") == []
    assert "no end marker" in caplog.text and torn_active in caplog.text
