"""A delivery worker SIGKILLed at the points where it writes no state of its own: just before
the Maildir copies are committed, and between a delivery that ends a message and the removal
that records it.  After recovery and a new run, nothing is lost, nothing is delivered more
than twice, and only the recipients of the last, unrecorded group are delivered twice.

Each case runs a real QueueManager in a forked child that stops (and is killed) at the
chosen point; the SMTP sink runs in the parent's thread and sees both runs.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from helpers.delivery import deliver_until_idle
from helpers.smtp_sinks import SinkMessage, SMTPSink

from fastmta.config import load_config
from fastmta.delivery import maildir as maildir_module
from fastmta.spool import Envelope, QueueAdmin, Recipient, RecipientState, Spool

SUBJECT = re.compile(rb"^Subject: (msg \d+)$", re.MULTILINE)


def recover(root: Path) -> int:
    """Spool.recover() as the master does at start-up; how many went back to incoming/."""
    spool = Spool(root)
    try:
        return spool.recover().to_incoming
    finally:
        spool.close()


def states(root: Path, queue_id: str) -> list[RecipientState]:
    spool = Spool(root)
    try:
        return [rcpt.state for rcpt in QueueAdmin(spool).show(queue_id).recipients]
    finally:
        spool.close()


def _deliver_until(root: str, settings: dict[str, Any], stop_at: str, conn: Connection) -> None:
    """In the child: deliver, stopping forever where `stop_at` says."""
    def stop() -> None:
        conn.send("stopped")
        time.sleep(120)

    if stop_at == "before the Maildir commit":
        commit = maildir_module.Maildir.commit

        def stopping_commit(self: maildir_module.Maildir, copies: Any) -> None:
            stop()
            commit(self, copies)

        maildir_module.Maildir.commit = stopping_commit  # type: ignore[method-assign]
    else:  # "before the removal": the unlink, or the rename into retired/ for reuse
        unlink, rename = os.unlink, os.rename
        active = f"{root}/active/"

        def stopping_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            if str(path).startswith(active):
                stop()
            unlink(path, *args, **kwargs)

        def stopping_rename(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
            if str(source).startswith(active) and str(target).startswith(f"{root}/retired/"):
                stop()
            rename(source, target, *args, **kwargs)

        os.unlink = stopping_unlink  # type: ignore[assignment]
        os.rename = stopping_rename  # type: ignore[assignment]
    deliver_until_idle(load_config(overrides=settings), Path(root))
    conn.send("finished without stopping")


def kill_at(root: Path, settings: dict[str, Any], stop_at: str) -> None:
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_deliver_until, args=(str(root), settings, stop_at, child_end))
    child.start()
    try:
        assert parent_end.poll(30), "the child never reached the stopping point"
        assert parent_end.recv() == "stopped"
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
    finally:
        if child.is_alive():
            child.kill()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, SMTPSink, dict[str, Any]]]:
    def slow_verdict(message: SinkMessage) -> None:
        time.sleep(0.3)  # the remote group ends last, after the local one recorded its own

    with SMTPSink("127.0.0.3", end_of_data_reply=slow_verdict) as sink:
        root = tmp_path / "spool"
        settings = {"spool": str(root), "hostname": "mx.test", "local_domains": "example.com",
                    "local_users": "bob,dave",
                    "transport_map": f"example.net=smtp:[127.0.0.3]:{sink.port}"}
        yield root, sink, settings


def queue(root: Path, number: int, *recipients: str) -> str:
    spool = Spool(root)
    try:
        return spool.enqueue(Envelope("alice@example.org", [Recipient(r) for r in recipients]),
                             b"Subject: msg %d\r\n\r\nbody\r\n" % number)
    finally:
        spool.close()


def maildir_copies(root: Path, user: str) -> list[bytes]:
    new = root / "mail" / user / "new"
    return sorted(SUBJECT.search(path.read_bytes()).group(1)  # type: ignore[union-attr]
                  for path in new.iterdir()) if new.is_dir() else []


def queued(root: Path) -> list[str]:
    return [name for queue in ("incoming", "active", "deferred") for name in os.listdir(root / queue)]


def test_a_kill_before_the_maildir_commit_delivers_each_copy_once(world) -> None:
    root, _, settings = world
    for number in range(3):
        queue(root, number, "bob@example.com", "dave@example.com")
    kill_at(root, settings, "before the Maildir commit")
    assert maildir_copies(root, "bob") == []  # written to tmp/ only: not delivered
    assert recover(root) == 3
    assert deliver_until_idle(load_config(overrides=settings), root) == 3
    expected = [b"msg 0", b"msg 1", b"msg 2"]
    assert maildir_copies(root, "bob") == expected and maildir_copies(root, "dave") == expected
    assert queued(root) == []


def test_a_kill_before_the_removal_that_ends_a_message_repeats_only_that_delivery(world) -> None:
    root, _, settings = world
    queue(root, 0, "bob@example.com", "dave@example.com")
    kill_at(root, settings, "before the removal")
    assert maildir_copies(root, "bob") == [b"msg 0"]  # committed: delivered
    (queue_id,) = os.listdir(root / "active")
    assert states(root, queue_id) == [RecipientState.PENDING] * 2  # the removal was the record
    assert recover(root) == 1
    deliver_until_idle(load_config(overrides=settings), root)
    # The allowed window: delivered between the copy and our record of it, so twice.
    assert maildir_copies(root, "bob") == [b"msg 0"] * 2
    assert maildir_copies(root, "dave") == [b"msg 0"] * 2
    assert queued(root) == []


def test_only_the_last_group_of_a_message_goes_unrecorded(world) -> None:
    root, sink, settings = world
    queue_id = queue(root, 0, "bob@example.com", "carol@example.net")
    kill_at(root, settings, "before the removal")
    assert [m.recipients for m in sink.messages] == [["carol@example.net"]]
    assert states(root, queue_id) == [RecipientState.DELIVERED, RecipientState.PENDING]
    assert recover(root) == 1
    deliver_until_idle(load_config(overrides=settings), root)
    assert maildir_copies(root, "bob") == [b"msg 0"]  # recorded: not repeated
    assert [m.recipients for m in sink.messages] == [["carol@example.net"]] * 2
    assert queued(root) == []
