"""Signals to the master, under load: SIGTERM drains without losing an acknowledged
message; SIGHUP swaps workers without refusing a connection, and a bad reload keeps
the old workers.  Real `fastmta serve` processes and smtplib clients in threads."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers.mta_process import (
    delivered_queue_ids,
    spool_queue_ids,
    wait_until,
)

from fastmta.spool import Spool

pytestmark = pytest.mark.slow



class Load:
    """Client threads sending messages, 3 per session, until the server stops them."""

    def __init__(self, server, threads: int = 6) -> None:
        self.server = server
        self.acknowledged: list[str] = []
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        try:
            while True:
                with smtplib.SMTP("127.0.0.1", self.server.port, timeout=20) as client:
                    for _ in range(3):
                        queue_id = self.server.send(client, b"Subject: load\r\n\r\n"
                                                    + b"line of text\r\n" * 50)
                        with self.lock:
                            self.acknowledged.append(queue_id)
        except (OSError, smtplib.SMTPException, AssertionError) as exc:
            with self.lock:
                self.errors.append(exc)  # the server stopped: refused, reset or 421

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a client thread hung"


def test_sigterm_under_load_exits_0_with_every_acknowledged_message_kept(mta):
    server = mta("--workers", "2", "--delivery-workers", "1").start()
    load = Load(server)
    wait_until(lambda: load.count() >= 100, 30, what="100 acknowledged messages")
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    load.join(10)
    acknowledged = set(load.acknowledged)
    assert len(acknowledged) == len(load.acknowledged) >= 100
    kept = spool_queue_ids(server.spool) | delivered_queue_ids(server.spool / "mail")
    assert acknowledged <= kept, f"lost: {sorted(acknowledged - kept)}"
    assert kept <= acknowledged, f"queued but never acknowledged: {sorted(kept - acknowledged)}"
    assert os.listdir(server.spool / "tmp") == []  # nothing half-written
    spool = Spool(server.spool)
    try:
        for queue_id in spool_queue_ids(server.spool):
            _queue, message = spool.open_message(queue_id)  # parses, checksums included
            with message:
                assert b"line of text" in message.read_body()
    finally:
        spool.close()
    assert "stopped" in server.log()


def test_sigterm_gives_open_sessions_the_drain_timeout_then_421(mta):
    server = mta("--workers", "1", "--delivery-workers", "0", "--drain-timeout", "1").start()
    with server.smtp() as client:
        client.ehlo("client.test")
        queue_id = server.send(client)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):  # stopped accepting at once
            socket.create_connection(("127.0.0.1", server.port), timeout=5)
        code, _reply = client.noop()  # the open session is still served while it drains
        assert code == 250
        # After the drain timeout the worker says goodbye on its own.
        client.sock.settimeout(10)
        assert client.getreply() == (421, b"4.3.2 mx.test Service shutting down; try again later")
        assert 0.9 <= time.monotonic() - started < 8
    assert server.wait(20) == 0
    assert queue_id in spool_queue_ids(server.spool)


def _size_watcher(server, seen: list[int], errors: list[BaseException], stop: threading.Event):
    while not stop.is_set():
        try:
            seen.append(server.ehlo_size())
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(exc)


def test_sighup_applies_new_size_without_refusing_a_connection(mta):
    server = mta("--workers", "2", "--delivery-workers", "0",
                 config_text='max_message_size = "1M"\n').start()
    old_workers = set(server.receive_workers())
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_size_watcher, args=(server, seen, errors, stop))
    watcher.start()
    try:
        wait_until(lambda: len(seen) >= 20, 10, what="EHLOs before the reload")
        server.config_path.write_text('max_message_size = "2M"\n')
        mark = len(server.log())
        server.send_signal(signal.SIGHUP)
        server.wait_for_log("reload done", 20, start=mark)
        wait_until(lambda: seen[-1] == 2 * 1024 * 1024, 10, what="the new SIZE")
        server.wait_for_log(r"(?s)after draining.*after draining", 15, start=mark)
        drained = len(seen)  # both old workers are gone: only the new size from here on
        wait_until(lambda: len(seen) >= drained + 20, 10, what="EHLOs after the reload")
    finally:
        stop.set()
        watcher.join(10)
    assert errors == []
    assert seen[0] == 1024 * 1024
    assert set(seen[drained:]) == {2 * 1024 * 1024}
    new_workers = set(server.receive_workers())
    assert len(new_workers) == 2 and not new_workers & old_workers


def test_sighup_with_config_error_keeps_the_running_workers(mta):
    server = mta("--workers", "2", "--delivery-workers", "0",
                 config_text='max_message_size = "1M"\n').start()
    workers = set(server.receive_workers())
    server.config_path.write_text('max_message_size = "ten megabytes"\n')
    server.send_signal(signal.SIGHUP)
    server.wait_for_log(r"reload failed, keeping the running workers: max_message_size: "
                        r"expected a size like", 10)
    assert server.ehlo_size() == 1024 * 1024
    time.sleep(0.3)
    assert set(server.receive_workers()) == workers
    with server.smtp() as client:
        server.send(client)


def test_sighup_cannot_move_the_listening_socket_and_says_so(mta):
    server = mta("--workers", "1", "--delivery-workers", "0",
                 config_text='listen = ["127.0.0.1:0"]\nmax_message_size = "1M"\n',
                 listen=None).start()
    server.config_path.write_text('listen = ["127.0.0.1:1"]\nmax_message_size = "3M"\n')
    server.send_signal(signal.SIGHUP)
    server.wait_for_log("reload done", 20)
    assert ("the listen addresses cannot change without a restart: still listening on "
            "127.0.0.1:0; restart fastmta to listen on 127.0.0.1:1") in server.log()
    assert server.ehlo_size() == 3 * 1024 * 1024  # the rest of the reload applied


@pytest.fixture
def open_dir():
    path = Path(tempfile.mkdtemp(prefix="fastmta-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run workers as nobody")
def test_reload_whose_new_workers_cannot_start_keeps_the_old_ones(mta, open_dir):
    # The master (root) can read the new aliases file, the new workers (nobody) cannot:
    # they die before serving, so the old workers must stay.
    aliases = open_dir / "aliases"
    aliases.write_text("postmaster: root@localhost\n")
    aliases.chmod(0o600)
    server = mta("--workers", "2", "--delivery-workers", "0", "--user", "nobody",
                 config_text='max_message_size = "1M"\n', spool=open_dir / "spool").start()
    workers = set(server.receive_workers())
    server.config_path.write_text(f'max_message_size = "2M"\naliases_file = "{aliases}"\n')
    server.send_signal(signal.SIGHUP)
    server.wait_for_log(r"reload failed: the new receive\.\d \(pid \d+\) exited with status 1 "
                        r"before it was serving; the running workers keep serving", 20)
    assert "Permission denied" in server.log()
    assert server.ehlo_size() == 1024 * 1024
    wait_until(lambda: set(server.receive_workers()) == workers, 10,
               what="only the old workers")


def test_reload_rereads_the_file_and_keeps_the_flags_given_at_start(tmp_path):
    from fastmta.config import load_config
    from fastmta.master import file_reloader, reload_checked

    path = tmp_path / "fastmta.toml"
    path.write_text('max_message_size = "1M"\nmax_recipients = 10\n')
    flags = {"max_recipients": "99", "spool": str(tmp_path / "spool"), "workers": "3"}
    config = load_config(path, flags)
    reloader = file_reloader(config)  # made at start, as the master does
    path.write_text('max_message_size = "2M"\nmax_recipients = 20\nspool = "/elsewhere"\n')
    new, tls_context = reload_checked(reloader, config)
    assert new.max_message_size == 2 * 1024 * 1024  # from the file, re-read
    assert new.max_recipients == 99 and new.workers == 3  # flags still win
    assert new.spool == tmp_path / "spool"  # a flag, and restart-only anyway
    assert tls_context is None
