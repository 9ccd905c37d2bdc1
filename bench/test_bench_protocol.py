"""Sans-IO SMTP server throughput: whole transactions per second, no sockets or disk.

Run: .venv/bin/python -m pytest bench/test_bench_protocol.py --benchmark-enable -q
A transaction is what a typical client sends: EHLO, then MAIL/RCPT/DATA pipelined,
1 KiB of content with the end marker, then QUIT, each as one packet, with the
replies fetched after each packet as the transport does.  Transactions per
second = 1 / mean time per round.
"""

from __future__ import annotations

from fastmta import kernels
from fastmta.policy import RecipientPolicy
from fastmta.protocol import MessageComplete, PeerInfo, ServerConnection, ServerSettings

SETTINGS = ServerSettings(hostname="mx.example.com", tls_available=True)
POLICY = RecipientPolicy(local_domains=["example.com"], local_users=["alice"])
PEER = PeerInfo("192.0.2.10", 40000)

EHLO = b"EHLO client.example.net\r\n"
ENVELOPE = b"MAIL FROM:<sender@example.net> SIZE=1100\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
CONTENT = (b"From: sender@example.net\r\nTo: alice@example.com\r\nSubject: benchmark\r\n\r\n"
           + b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n" * 15
           + b".\r\n")
QUIT = b"QUIT\r\n"


def one_session() -> int:
    conn = ServerConnection(SETTINGS, POLICY, PEER)
    conn.greeting()
    conn.data_to_send()
    conn.receive_data(EHLO)
    conn.data_to_send()
    conn.receive_data(ENVELOPE)
    conn.data_to_send()
    events = conn.receive_data(CONTENT)
    assert isinstance(events[-1], MessageComplete)
    conn.accept_message("QUEUEID0001")
    conn.data_to_send()
    conn.receive_data(QUIT)
    return len(conn.data_to_send())


def test_bench_full_session_per_connection(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Connect, greet, EHLO, one 1 KiB message, QUIT."""
    benchmark.extra_info["kernels"] = kernels.BACKEND
    assert benchmark(one_session) > 0


def test_bench_transactions_on_one_connection(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Back-to-back transactions on an open connection (MAIL, RCPT, DATA, 1 KiB)."""
    benchmark.extra_info["kernels"] = kernels.BACKEND
    conn = ServerConnection(SETTINGS, POLICY, PEER)
    conn.greeting()
    conn.receive_data(EHLO)
    conn.data_to_send()

    def transaction() -> None:
        conn.receive_data(ENVELOPE)
        conn.data_to_send()
        conn.receive_data(CONTENT)
        conn.accept_message("QUEUEID0001")
        conn.data_to_send()

    benchmark(transaction)
