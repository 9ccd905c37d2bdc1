"""`fastmta queue ...` as an operator uses it: output text, --json, exit statuses, and a flush
watched while a real delivery worker process works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.mta_process import wait_until

from fastmta.cli import main
from fastmta.spool import Envelope, Recipient, Spool

BODY = b"Subject: queued\r\n\r\nhello\r\n"


def fastmta(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["queue", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    yield spool
    spool.close()


def queue(spool: Spool, *recipients: str, sender: str = "alice@example.org") -> str:
    return spool.enqueue(Envelope(sender, [Recipient(r) for r in recipients]), BODY)


def deferred(spool: Spool, next_try: float) -> str:
    """A message tried once: bob delivered, carol greylisted."""
    queue_id = queue(spool, "bob@example.com", "carol@example.net")
    message = spool.claim(queue_id)
    assert message is not None
    message.mark_delivered([0])
    message.mark_deferred([1], "451 4.7.1 Greylisted", remote="mx.example.net[192.0.2.1]:25")
    message.defer(next_try)
    return queue_id


def local(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def test_an_empty_queue_says_so(spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    assert fastmta(capsys, "--spool", str(spool.root), "list") == (0, "The queue is empty.\n", "")


def test_list_shows_state_next_try_and_last_error(spool: Spool,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    next_try = time.time() + 600
    first = deferred(spool, next_try)
    second = queue(spool, "dave@example.com", sender="")
    status, out, _ = fastmta(capsys, "--spool", str(spool.root), "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["QUEUE", "ID", "QUEUE", "SIZE", "ARRIVED", "SENDER"]
    assert lines[1].startswith(f"{first}  deferred")
    assert lines[1].endswith("<alice@example.org>")
    assert lines[2].strip() == "<bob@example.com>: delivered"
    assert lines[3].strip() == "<carol@example.net>: deferred, 1 attempt"
    assert lines[4].strip() == "host mx.example.net[192.0.2.1]:25 said: 451 4.7.1 Greylisted"
    assert lines[5].strip() == f"next try {local(next_try)}"
    assert lines[6].startswith(f"{second}  incoming") and lines[6].endswith("<>")
    assert lines[7].strip() == "<dave@example.com>: pending"
    assert lines[8] == f"-- 2 messages, {2 * len(BODY)} in total"


def test_list_json_is_one_array_of_entries(spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    next_try = time.time() + 600
    queue_id = deferred(spool, next_try)
    status, out, _ = fastmta(capsys, "--spool", str(spool.root), "list", "--json")
    assert status == 0
    (entry,) = json.loads(out)
    assert entry["queue_id"] == queue_id and entry["queue"] == "deferred"
    assert entry["sender"] == "alice@example.org" and entry["size"] == len(BODY)
    assert entry["next_try"] == pytest.approx(next_try, abs=0.01)
    assert entry["last_error"] == "451 4.7.1 Greylisted"
    assert [(r["address"], r["state"], r["attempts"]) for r in entry["recipients"]] == [
        ("bob@example.com", "delivered", 0), ("carol@example.net", "deferred", 1)]


def test_show_prints_the_envelope_then_the_message(spool: Spool,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    queue_id = queue(spool, "bob@example.com")
    status = main(["queue", "--spool", str(spool.root), "show", queue_id.lower()])
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith(f"{queue_id}  incoming")
    assert "<bob@example.com>: pending" in out
    assert "client: (generated here)" in out
    assert out.endswith(BODY.decode())
    status, out, _ = fastmta(capsys, "--spool", str(spool.root), "show", queue_id, "--json")
    assert json.loads(out)["recipients"][0]["address"] == "bob@example.com"


def test_unknown_ids_fail_and_say_where_to_look(spool: Spool,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("show", "hold", "release", "delete", "flush"):
        status, out, err = fastmta(capsys, "--spool", str(spool.root), action,
                                   "1K1CMPPNACAA72M00HZM")
        assert status == 1 and out == ""
        assert "fastmta queue list" in err, (action, err)
    status, _, err = fastmta(capsys, "--spool", str(spool.root), "show", "../../etc/passwd")
    assert status == 1 and "is not a queue id" in err


def test_hold_release_and_delete(spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(spool.root)
    first, second, third = (queue(spool, "bob@example.com") for _ in range(3))
    assert fastmta(capsys, "--spool", root, "hold", first)[:2] == (
        0, f"{first}: on hold (was in incoming/); `fastmta queue release` sends it on\n")
    assert os.listdir(spool.hold_dir) == [first]
    assert fastmta(capsys, "--spool", root, "release", first)[:2] == (
        0, f"{first}: released; it is tried now\n")
    assert fastmta(capsys, "--spool", root, "delete", second)[:2] == (
        0, f"{second}: deleted from incoming/\n")
    busy = spool.claim(third)
    assert busy is not None
    status, _, err = fastmta(capsys, "--spool", root, "delete", third)
    assert status == 1 and "being delivered right now" in err
    assert fastmta(capsys, "--spool", root, "delete", "--all")[:2] == (
        0, ("Deleted 1 message.\n1 message being delivered right now was not deleted; "
           "run the command again when the attempts are over.\n"))
    busy.release()
    assert sorted(os.listdir(spool.incoming_dir)) == [third]


def test_stats_counts_and_sizes_per_queue(spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    queue(spool, "bob@example.com")
    deferred(spool, time.time() + 600)
    status, out, _ = fastmta(capsys, "--spool", str(spool.root), "stats", "--json")
    assert status == 0
    stats = json.loads(out)
    assert stats["incoming"]["count"] == 1 and stats["deferred"]["count"] == 1
    assert stats["active"] == {"count": 0, "bytes": 0}
    assert stats["incoming"]["bytes"] > len(BODY)
    _status, out, _ = fastmta(capsys, "--spool", str(spool.root), "stats")
    assert out.splitlines()[0].split() == ["QUEUE", "MESSAGES", "SIZE"]
    assert out.splitlines()[4].split()[:2] == ["deferred", "1"]  # after tmp, incoming, active


def test_flush_without_a_running_server_says_what_to_do(spool: Spool,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    queue_id = deferred(spool, time.time() + 600)
    status, out, err = fastmta(capsys, "--spool", str(spool.root), "flush")
    assert status == 1 and out == ""
    assert "no delivery worker is running" in err and "start `fastmta serve`" in err
    assert os.listdir(spool.incoming_dir) == [queue_id]  # due now, for when it starts


def test_a_missing_spool_or_a_bad_config_is_reported(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = fastmta(capsys, "--spool", str(tmp_path / "nowhere"), "list")
    assert status == 1 and "there is no spool" in err and "--spool" in err
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "bad.toml").write_text("max_message_size = -1\n")
    status, _, err = fastmta(capsys, "--config", str(tmp_path / "bad.toml"), "list")
    assert status == 2 and "max_message_size" in err


def test_flush_shows_progress_while_a_delivery_worker_tries_the_mail(tmp_path: Path,
                                                                    spool: Spool) -> None:
    config = tmp_path / "fastmta.toml"
    config.write_text(f'spool = "{spool.root}"\nhostname = "mx.test"\n'
                      'local_domains = "example.com"\nqueue_scan_interval = 0.1\n'
                      '[transport_map]\n"example.net" = "retry:4.4.3 held back by the test"\n')
    ids = [deferred(spool, time.time() + 3600) for _ in range(3)]
    entry = ("import sys; from fastmta.config import load_config; "
             "from fastmta.delivery.worker import run_delivery_worker; "
             "sys.exit(run_delivery_worker(load_config(sys.argv[1])))")
    worker = subprocess.Popen([sys.executable, "-c", entry, str(config)], stderr=subprocess.DEVNULL)
    try:
        from fastmta.delivery.worker import delivery_running

        wait_until(lambda: delivery_running(spool.root), 10, what="the delivery worker")
        assert sorted(os.listdir(spool.deferred_dir)) == sorted(ids)  # not due for an hour
        done = subprocess.run([sys.executable, "-m", "fastmta", "queue", "--config", str(config),
                               "flush", "--timeout", "20"], check=False, capture_output=True,
                              text=True, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Flushed 3 deferred messages; the delivery workers try them now."
    # carol@example.net is held back by the transport map: each message is deferred again.
    assert lines[-2] == "0 delivered or bounced, 3 deferred again, 0 being tried"
    assert lines[-1] == "`fastmta queue list` shows why deferred mail is waiting."
    assert sorted(os.listdir(spool.deferred_dir)) == sorted(ids)
