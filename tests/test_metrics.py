"""Metrics: the master's /metrics endpoint scraped and parsed while real workers serve,
counters that survive a killed worker, the HTTP edge cases, and the recording API
across processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
from helpers.mta_process import wait_until
from prometheus_client.parser import text_string_to_metric_families

from fastmta import metrics

pytestmark = pytest.mark.slow



def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


COUNTERS = ("fastmta_messages_accepted_total", "fastmta_smtp_connections_total",
            "fastmta_received_bytes_total", "fastmta_recipients_accepted_total")


def test_metrics_endpoint_counts_what_was_sent_and_survives_a_killed_worker(mta):
    server = mta("--workers", "2", "--delivery-workers", "0", "--metrics", "127.0.0.1:0",
                 "--max-message-size", "2k").start()
    assert server.metrics_port
    body = b"Subject: m\r\n\r\n" + b"x" * 100 + b"\r\n"
    for _ in range(2):
        with server.smtp() as client:
            for _ in range(2):
                server.send(client, body)
            client.ehlo_or_helo_if_needed()
            client.mail("sender@example.com")
            client.rcpt("a@localhost")
            client.rcpt("b@localhost")
            assert client.data(body)[0] == 250
            client.mail("sender@example.com")
            client.rcpt("a@localhost")
            code, reply = client.data(b"Subject: big\r\n\r\n" + b"y" * 3000 + b"\r\n")
            assert code == 552, reply
            # Declared too big up front: refused at MAIL (RFC 1870), counted too.
            code, reply = client.mail("sender@example.com", ["SIZE=5000"])
            assert code == 552, reply
    # Workers write their counts at most a second late: poll.
    samples = wait_until(
        lambda: (s := scrape(server.metrics_port))
        and value(s, "fastmta_messages_accepted_total") == 6
        and value(s, "fastmta_smtp_connections_open") == 0 and s, 5, what="the counts")
    assert value(samples, "fastmta_recipients_accepted_total") == 8
    assert value(samples, "fastmta_received_bytes_total") == 6 * len(body)
    assert value(samples, "fastmta_messages_rejected_total", reason="too_big") == 2
    assert value(samples, "fastmta_messages_rejected_total", reason="mail_too_big") == 2
    assert value(samples, "fastmta_smtp_connections_total") == 2
    assert value(samples, "fastmta_spool_messages", queue="incoming") == 6
    assert value(samples, "fastmta_spool_messages", queue="tmp") == 0
    for slot in ("0", "1"):
        assert value(samples, "fastmta_worker_up", role="receive", slot=slot) == 1
        assert value(samples, "fastmta_worker_restarts_total", role="receive", slot=slot) == 0

    before = server.receive_workers()
    os.kill(before[0], signal.SIGKILL)
    wait_until(lambda: len(set(server.receive_workers()) - set(before)) == 1, 5,
               what="the replacement")
    after = scrape(server.metrics_port)
    for name in COUNTERS:
        assert value(after, name) >= value(samples, name), name
    assert value(after, "fastmta_messages_accepted_total") == 6
    restarts = [value(after, "fastmta_worker_restarts_total", role="receive", slot=slot)
                for slot in ("0", "1")]
    assert sorted(restarts) == [0, 1]
    with server.smtp() as client:
        server.send(client, body)
    wait_until(lambda: value(scrape(server.metrics_port),
                             "fastmta_messages_accepted_total") == 7, 5, what="one more")


def test_metrics_endpoint_answers_only_get_metrics(mta):
    server = mta("--workers", "1", "--delivery-workers", "0", "--metrics", "127.0.0.1:0").start()
    base = f"http://127.0.0.1:{server.metrics_port}"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/other", timeout=10)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", data=b"x"), timeout=10)
    assert post.value.code == 405
    with socket.create_connection(("127.0.0.1", server.metrics_port), timeout=10) as sock:
        sock.sendall(b"hello\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.0 400 ")
    # A client that connects and says nothing does not stop the others being served.
    with socket.create_connection(("127.0.0.1", server.metrics_port), timeout=10):
        assert "fastmta_worker_up" in urllib.request.urlopen(f"{base}/metrics",
                                                             timeout=10).read().decode()


SCRIPT = textwrap.dedent("""
    import os, sys, json
    from fastmta import metrics
    directory = sys.argv[1]
    metrics.enable(directory)
    pids = []
    for worker in range(2):
        pid = os.fork()
        if pid == 0:
            for _ in range(3):
                metrics.connection_opened()
                metrics.message_accepted(100, 2)
            metrics.connection_closed()
            metrics.message_rejected(metrics.rejection_reason("5.6.0"))
            metrics.delivery_outcome("delivered", 2)
            metrics.delivery_outcome("bounced")
            metrics.flush()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    sys.stdout.write(generate_latest(registry).decode())
""")


def test_recording_api_sums_over_processes(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                            text=True, timeout=60, check=True)
    samples = {}
    for family in text_string_to_metric_families(result.stdout):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(samples, "fastmta_messages_accepted_total") == 6
    assert value(samples, "fastmta_recipients_accepted_total") == 12
    assert value(samples, "fastmta_received_bytes_total") == 600
    assert value(samples, "fastmta_smtp_connections_total") == 6
    assert value(samples, "fastmta_messages_rejected_total", reason="bare_line_ending") == 2
    assert value(samples, "fastmta_delivery_outcomes_total", outcome="delivered") == 4
    assert value(samples, "fastmta_delivery_outcomes_total", outcome="bounced") == 2


def test_delivery_outcome_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="delivered, deferred, bounced"):
        metrics.delivery_outcome("lost")


DISABLED = textwrap.dedent("""
    import sys
    from fastmta import metrics
    for _ in range(1000):
        metrics.connection_opened()
        metrics.message_accepted(10, 1)
        metrics.message_rejected("too_big")
        metrics.delivery_outcome("deferred")
        metrics.connection_closed()
    metrics.flush()
    print(metrics.enabled(), "prometheus_client" in sys.modules)
""")


def test_without_enable_recording_never_touches_prometheus_client():
    result = subprocess.run([sys.executable, "-c", DISABLED], capture_output=True, text=True,
                            timeout=60, check=True, env={k: v for k, v in os.environ.items()
                                                         if k != metrics.MULTIPROC_ENV})
    assert result.stdout.split() == ["False", "False"]
