"""The pre-forking master as an operator sees it: process tree, replacement of dead
workers, back-off, pid file, privilege checks.  Real `fastmta serve` processes."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import tempfile
import time
from pathlib import Path

import pytest
from helpers.mta_process import (
    DELIVERY_NAME,
    RECEIVE_NAME,
    alive,
    delivered_queue_ids,
    process_name,
    wait_until,
)

from fastmta.config import load_config
from fastmta.process.privileges import root_refusal
from fastmta.process.supervisor import restart_delay

pytestmark = pytest.mark.slow



def test_process_tree_has_master_receive_and_delivery_workers(mta):
    server = mta("--workers", "2", "--delivery-workers", "1").start()
    wait_until(lambda: len(server.delivery_workers()) == 1, 10, what="the delivery worker")
    children = server.workers()
    names = sorted(process_name(pid) for pid in children)
    assert names == [DELIVERY_NAME, RECEIVE_NAME, RECEIVE_NAME]
    # Workers are the master's children, and nothing else is.
    for pid in children:
        with open(f"/proc/{pid}/stat") as handle:
            assert int(handle.read().rsplit(")", 1)[1].split()[1]) == server.pid
    with server.smtp() as client:
        assert client.ehlo("client.test")[0] == 250


def test_killed_receive_worker_is_replaced_and_service_continues(mta):
    server = mta("--workers", "2", "--delivery-workers", "0").start()
    before = server.receive_workers()
    assert len(before) == 2
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    # The other worker (or the listen queue) keeps answering while the master reacts.
    for _ in range(5):
        with server.smtp() as client:
            server.send(client)
    replaced = wait_until(lambda: (set(server.receive_workers()) - set(before)) or None, 5,
                          what="a new receive worker")
    assert victim not in server.receive_workers()
    assert len(server.receive_workers()) == 2
    assert len(replaced) == 1
    server.wait_for_log(rf"receive\.\d \(pid {victim}\) was killed by SIGKILL; starting a new one")
    with server.smtp() as client:
        server.send(client)


def test_workers_do_not_outlive_a_master_killed_with_sigkill(mta):
    server = mta("--workers", "2", "--delivery-workers", "1").start()
    workers = wait_until(lambda: len(server.workers()) == 3 and server.workers(), 10,
                         what="3 workers")
    os.kill(server.pid, signal.SIGKILL)
    server.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in workers), 15,
               what="the orphaned workers to drain and exit")


def test_worker_dying_at_start_is_backed_off_not_respawned_in_a_loop(mta):
    server = mta("--workers", "1", "--delivery-workers", "0").start()
    starts = []
    current = server.receive_workers()[0]
    for _ in range(4):
        os.kill(current, signal.SIGKILL)
        started_at = time.monotonic()
        killed = current

        def replacement() -> int | None:
            return next(iter(set(server.receive_workers()) - {killed}), None)  # noqa: B023

        current = wait_until(replacement, 10, interval=0.01, what="a replacement")
        starts.append(time.monotonic() - started_at)
    # Deaths 1..4 within seconds of their start: restarts after 0, 0.5, 1 and 2 s.
    assert starts[0] < 1.0
    assert starts[2] >= 0.8
    assert starts[3] >= 1.7
    server.wait_for_log(r"the 4\. time in a row within 10s of its start; backing off: next start "
                        r"in 2s")
    wait_until(lambda: alive(current), 5, what="the last replacement")
    with server.smtp() as client:
        server.send(client)


def test_restart_delay_grows_exponentially_and_is_capped():
    assert [restart_delay(n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == 30.0


def test_pid_file_written_refused_while_live_removed_at_exit(mta, tmp_path):
    pid_file = tmp_path / "fastmta.pid"
    server = mta("--workers", "1", "--delivery-workers", "0", "--pid-file", str(pid_file)).start()
    assert pid_file.read_text().strip() == str(server.pid)
    second = mta("--workers", "1", "--delivery-workers", "0", "--pid-file", str(pid_file))
    second.start(wait_ready=False)
    assert second.wait(20) == 1
    assert f"names process {server.pid}, which is running" in second.log()
    assert pid_file.read_text().strip() == str(server.pid)
    server.send_signal(signal.SIGTERM)
    assert server.wait(20) == 0
    assert not pid_file.exists()


def test_stale_pid_file_is_replaced(mta, tmp_path):
    pid_file = tmp_path / "fastmta.pid"
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    pid_file.write_text(f"{dead}\n")
    server = mta("--workers", "1", "--delivery-workers", "0", "--pid-file", str(pid_file)).start()
    assert pid_file.read_text().strip() == str(server.pid)
    assert "removing stale pid file" in server.log()


def test_root_without_user_on_public_address_is_refused(mta):
    server = mta("--workers", "1", listen="0.0.0.0:0")
    server.start(wait_ready=False)
    assert server.wait(20) == 2
    log = server.log()
    assert "refusing to run as root while listening on 0.0.0.0:0" in log
    assert "--user" in log
    assert "INFO fastmta.master: listening on" not in log  # refused before binding anything


def test_root_refusal_rule():
    public = load_config(None, {"listen": "0.0.0.0:25,127.0.0.1:2525"})
    loopback = load_config(None, {"listen": "127.0.0.1:25,[::1]:25"})
    with_user = load_config(None, {"listen": "0.0.0.0:25", "user": "nobody"})
    assert "0.0.0.0:25" in root_refusal(public, euid=0)
    assert "127.0.0.1" not in root_refusal(public, euid=0)
    assert root_refusal(public, euid=1000) is None
    assert root_refusal(loopback, euid=0) is None
    assert root_refusal(with_user, euid=0) is None


@pytest.fixture
def open_dir():
    """A directory the worker user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="fastmta-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_workers_drop_to_user_and_group_and_spool_is_theirs(mta, open_dir):
    nobody = pwd.getpwnam("nobody")
    server = mta("--workers", "1", "--delivery-workers", "0", "--user", "nobody",
                 "--group", "nogroup", spool=open_dir / "spool").start()
    worker = server.receive_workers()[0]
    with open(f"/proc/{worker}/status") as handle:
        status = dict(line.split(":", 1) for line in handle.read().splitlines() if ":" in line)
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split()[0] == str(nobody.pw_gid)
    assert status["Groups"].split() == [str(nobody.pw_gid)]
    assert (server.spool / "incoming").stat().st_uid == nobody.pw_uid
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        queue_id = server.send(client)
    assert (server.spool / "incoming" / queue_id).stat().st_uid == nobody.pw_uid
    with open(f"/proc/{server.pid}/status") as handle:
        # The master keeps root: new workers read the TLS key as root on reload.
        assert "Uid:\t0\t0\t0\t0" in handle.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_spool_the_worker_user_cannot_reach_is_refused_at_start(mta, tmp_path):
    tmp_path.chmod(0o700)
    server = mta("--workers", "1", "--user", "nobody")
    server.start(wait_ready=False)
    assert server.wait(20) == 2
    assert f"the worker user nobody cannot reach {tmp_path / 'spool'}" in server.log()
    assert "chmod o+x" in server.log()


def test_unknown_user_is_a_clear_error(mta):
    server = mta("--workers", "1", "--user", "no-such-user-fastmta")
    server.start(wait_ready=False)
    assert server.wait(20) == 2
    assert "--user no-such-user-fastmta: no such user" in server.log()


def test_workers_zero_serves_reloads_and_stops_in_the_master_alone(mta):
    server = mta("--workers", "0", "--delivery-workers", "1",
                 config_text='max_message_size = "1M"\n').start()
    assert server.workers() == []
    with server.smtp() as client:
        queue_id = server.send(client)
        # Received and delivered (to the local Maildir) by the one process.
        wait_until(lambda: queue_id in delivered_queue_ids(server.spool / "mail"), 10,
                   what="the local delivery")
        server.config_path.write_text('max_message_size = "2M"\n')
        server.send_signal(signal.SIGHUP)
        server.wait_for_log("reload done")
        assert server.ehlo_size() == 2 * 1024 * 1024
        server.send(client)  # the session opened before the reload carries on
    assert f"single[{server.pid}]" in server.log()
    server.send_signal(signal.SIGTERM)
    assert server.wait(20) == 0
    assert server.workers() == []
