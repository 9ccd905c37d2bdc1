"""Delivery worker processes: several racing over one spool, SIGKILL mid-delivery and restart,
SIGTERM, and `fastmta serve` delivering into a Maildir.  Real processes, real files, a DNS
server and an SMTP sink on 127.0.0.0/8."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.dns_server import DNSServer
from helpers.mta_process import wait_until
from helpers.smtp_sinks import SinkMessage, SMTPSink

from fastmta.delivery.worker import delivery_running
from fastmta.spool import Envelope, Recipient, Spool

WORKER = ("import logging, sys\n"
          "logging.basicConfig(level=logging.INFO, format='%(process)d %(levelname)s %(message)s')\n"
          "from fastmta.config import load_config\n"
          "from fastmta.delivery.worker import run_delivery_worker\n"
          "sys.exit(run_delivery_worker(load_config(sys.argv[1])))\n")
SUBJECT = re.compile(rb"^Subject: (msg \d+)\r?$", re.MULTILINE)



class Workers:
    """Delivery worker processes started from a TOML config, killed at the end."""

    def __init__(self, tmp_path: Path, config_text: str) -> None:
        self.tmp_path = tmp_path
        self.config = tmp_path / "fastmta.toml"
        self.config.write_text(config_text)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(self.config)], stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "".join(path.read_text() for path in sorted(self.tmp_path.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def setup(tmp_path: Path, dns_server: DNSServer) -> Iterator[tuple[Workers, SMTPSink, Path]]:
    def slow_verdict(message: SinkMessage) -> None:
        time.sleep(0.02)  # keeps deliveries in flight long enough to kill a worker among them

    with SMTPSink("127.0.0.3", end_of_data_reply=slow_verdict) as sink:
        dns_server.add("example.net", "MX", "10 mx.example.net")
        dns_server.add("mx.example.net", "A", "127.0.0.3")
        spool = tmp_path / "spool"
        workers = Workers(tmp_path, f"""
spool = "{spool}"
hostname = "mx.test"
local_domains = "example.com"
dns_nameservers = "{dns_server.nameserver}"
outbound_port = {sink.port}
queue_scan_interval = 0.1
drain_timeout = 2
""")
        try:
            yield workers, sink, spool
        finally:
            workers.stop_all()


def queue_messages(spool_root: Path, count: int) -> None:
    spool = Spool(spool_root)
    for number in range(count):
        spool.enqueue(Envelope("alice@example.org", [Recipient("bob@example.com"),
                                                     Recipient("carol@example.net")]),
                      f"Subject: msg {number}\r\n\r\nbody {number}\r\n".encode())
    spool.close()


def queued(spool_root: Path) -> int:
    return sum(len(os.listdir(spool_root / q)) for q in ("incoming", "active", "deferred"))


def subjects_in_maildir(maildir: Path) -> collections.Counter[bytes]:
    found: collections.Counter[bytes] = collections.Counter()
    for path in (maildir / "new").iterdir() if (maildir / "new").is_dir() else []:
        found.update(SUBJECT.findall(path.read_bytes()))
    return found


def test_several_workers_racing_deliver_each_message_exactly_once(setup) -> None:
    workers, sink, spool = setup
    # More than one worker takes at once (64 in flight), so the others get a share: the
    # slow sink keeps the first one busy for seconds while they start.
    total = 100
    queue_messages(spool, total)
    procs = [workers.start() for _ in range(3)]
    wait_until(lambda: queued(spool) == 0, 30, what="the queue to empty")
    assert delivery_running(spool)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(10) for proc in procs] == [0, 0, 0], workers.logs()
    assert not delivery_running(spool)
    expected = {f"msg {n}".encode() for n in range(total)}
    local = subjects_in_maildir(spool / "mail" / "bob")
    assert set(local) == expected and set(local.values()) == {1}
    remote = collections.Counter(SUBJECT.search(m.content).group(1) for m in sink.messages)
    assert set(remote) == expected and set(remote.values()) == {1}
    attempts = [int(n) for n in re.findall(r"after (\d+) delivery attempts", workers.logs())]
    assert sum(attempts) == total and len(attempts) == 3
    assert sum(1 for count in attempts if count) >= 2, attempts  # they really shared the work


def test_sigkill_mid_delivery_then_restart_loses_nothing_and_repeats_at_most_once(setup) -> None:
    workers, sink, spool = setup
    queue_messages(spool, 40)
    first = workers.start()
    wait_until(lambda: len(sink.messages) >= 10, 20, what="some deliveries")
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    in_flight = len(os.listdir(spool / "active"))
    assert in_flight > 0, "the kill should have caught deliveries under way"
    second = workers.start()  # returns the dead worker's active/ files to the queue itself
    wait_until(lambda: queued(spool) == 0, 30, what="the restarted worker to finish")
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0
    assert "left in active/ by a delivery worker that died" in workers.logs()
    expected = {f"msg {n}".encode() for n in range(40)}
    local = subjects_in_maildir(spool / "mail" / "bob")
    remote = collections.Counter(SUBJECT.search(m.content).group(1) for m in sink.messages)
    for counts in (local, remote):
        assert set(counts) == expected  # nothing lost
        assert set(counts.values()) <= {1, 2}  # at most one repeat (killed between 250 and record)
        assert sum(counts.values()) - len(expected) <= in_flight


def test_sigterm_stops_within_the_drain_bound_and_returns_unfinished_mail(setup, dns_server
                                                                          ) -> None:
    workers, sink, spool = setup
    with SMTPSink("127.0.0.4", sink.port, silent=True) as silent:
        dns_server.add("slow.test", "A", "127.0.0.4")
        Spool(spool).enqueue(Envelope("alice@example.org", [Recipient("x@slow.test")]),
                             b"Subject: stuck\r\n\r\n.\r\n")
        proc = workers.start()
        wait_until(lambda: silent.sessions, 10, what="the delivery attempt")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5  # drain_timeout is 2 s
    assert os.listdir(spool / "active") == []
    assert len(os.listdir(spool / "incoming")) == 1
    assert "did not finish in 2 s" in workers.logs()


@pytest.mark.parametrize("receive_workers", ["0", "1"])
def test_mail_sent_to_fastmta_serve_for_a_local_user_lands_in_the_maildir(
        mta, receive_workers: str) -> None:
    server = mta("--workers", receive_workers, "--delivery-workers", "1",
                 "--queue-scan-interval", "0.1").start()
    with server.smtp() as client:
        queue_id = server.send(client, b"Subject: to the maildir\r\n\r\nHello user.\r\n",
                               recipient="user@localhost")
    new = server.spool / "mail" / "user" / "new"
    wait_until(lambda: new.is_dir() and os.listdir(new), 15, what="the Maildir copy")
    (name,) = os.listdir(new)
    content = (new / name).read_bytes()
    assert content.startswith(b"Return-Path: <sender@example.com>\nDelivered-To: user@localhost\n"
                              b"Received: ")
    assert f"id {queue_id}".encode() in content
    assert content.endswith(b"Subject: to the maildir\n\nHello user.\n")
    wait_until(lambda: not any(os.listdir(server.spool / q) for q in ("incoming", "active")), 5,
               what="the queue to empty")
