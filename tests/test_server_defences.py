"""The receive server's defences, over raw sockets: what a hostile or broken client
sees, and that nothing of a refused message is queued.

Limits and where they come from: command lines of 512 octets (RFC 5321 4.5.3.1.4),
CRLF only (RFC 5321 2.3.8, and the SMTP smuggling variants of bare LF), SIZE
(RFC 1870), the idle timeout (RFC 5321 4.5.3.2), talking before the greeting
(RFC 5321 4.3.1), mail loops (RFC 5321 6.3), error count and session limits.
"""

from __future__ import annotations

import socket
import time

import pytest
from helpers.server import (
    HOSTNAME,
    message_bytes,
    queue_id_of,
    split_received,
    wait_until,
)

ENVELOPE = b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n"


def open_data(raw) -> None:
    """Greet, then MAIL/RCPT/DATA pipelined; the server is now reading content."""
    raw.greet()
    raw.send(ENVELOPE)
    assert [reply[:3] for reply in raw.replies(3)] == [b"250", b"250", b"354"]


def send_one_message(raw, subject: str = "after") -> str:
    raw.send(ENVELOPE)
    assert [reply[:3] for reply in raw.replies(3)] == [b"250", b"250", b"354"]
    raw.send(message_bytes(subject) + b".\r\n")
    return queue_id_of(raw.reply())


# --- command lines -------------------------------------------------------------------


def test_command_line_limit_is_512_octets(receive_server) -> None:
    server = receive_server()
    with server.raw() as raw:
        raw.greet()
        fits = b"NOOP " + b"x" * (512 - 7)  # 512 octets with its CRLF
        assert raw.command(fits) == b"250 2.0.0 Ok\r\n"
        assert raw.command(fits + b"x").startswith(b"500 5.5.2 Line too long")
        assert raw.command(b"NOOP " + b"y" * 100_000).startswith(b"500 5.5.2 ")
        # One reply per line, and the session goes on.
        assert send_one_message(raw)


def padded(prefix: bytes, suffix: bytes, total: int) -> bytes:
    """prefix, spaces, suffix: a command line of exactly `total` octets with its CRLF."""
    line = prefix + b" " * (total - len(prefix) - len(suffix) - 2) + suffix
    assert len(line) + 2 == total
    return line


def test_mail_and_rcpt_lines_may_be_longer_by_their_parameters(receive_server) -> None:
    # RFC 5321 4.5.3.1.4 plus what each advertised extension allows: MAIL 512 + 26 (SIZE)
    # + 16 (BODY) + 10 (SMTPUTF8) + 100 (DSN) = 664 octets, RCPT 512 + 500 (DSN) = 1012.
    server = receive_server()
    with server.raw() as raw:
        assert b"250-DSN\r\n" in raw.greet()
        garbage = b"MAIL FROM:<a@b.c> " + b"X" * 698  # 718 octets: too long, never parsed
        assert raw.command(garbage).startswith(b"500 5.5.2 Line too long")
        mail = b"MAIL FROM:<sender@example.com>"
        assert raw.command(padded(mail, b"SIZE=1000", 665)).startswith(b"500 5.5.2 ")
        assert raw.command(padded(mail, b"SIZE=1000", 664)) == b"250 2.1.0 Sender ok\r\n"
        rcpt = b"RCPT TO:<user@localhost>"
        orcpt = b"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;" + b"u" * 470 + b"@example.com"
        assert raw.command(padded(rcpt, orcpt, 1013)).startswith(b"500 5.5.2 ")
        assert raw.command(padded(rcpt, orcpt, 1012)) == b"250 2.1.5 Recipient ok\r\n"
        raw.send(b"DATA\r\n")
        assert raw.reply().startswith(b"354")
        raw.send(message_bytes("long envelope") + b".\r\n")
        queue_id = queue_id_of(raw.reply())
    stored = server.read(queue_id)
    assert stored.envelope.recipients[0].params["ORCPT"].endswith("u@example.com")


def test_bare_lf_in_a_command_is_refused_and_the_session_goes_on(receive_server) -> None:
    server = receive_server()
    with server.raw() as raw:
        raw.greet()
        raw.send(b"NOOP\n")
        assert raw.reply().startswith(b"500 5.5.2 Bare CR or LF")
        raw.send(b"MAIL FROM:<a@example.com>\rRCPT TO:<user@localhost>\r\n")
        assert raw.reply().startswith(b"500 5.5.2 ")
        assert send_one_message(raw)
    assert len(server.queued_ids()) == 1


def test_nul_in_a_command_is_refused(receive_server) -> None:
    server = receive_server()
    with server.raw() as raw:
        raw.greet()
        assert raw.command(b"NOOP \x00").startswith(b"500 5.5.2 NUL")
        assert raw.command(b"MAIL FROM:<a\x00@example.com>").startswith(b"500 5.5.2 NUL")
        assert raw.command(b"NOOP") == b"250 2.0.0 Ok\r\n"


def test_too_many_errors_close_the_session_with_421(receive_server) -> None:
    server = receive_server()
    with server.raw() as raw:
        raw.greet()
        raw.send(b"XYZZY\r\n" * 25)
        replies = raw.replies(21)
        assert all(reply.startswith(b"500 5.5.2 ") for reply in replies[:20])
        assert replies[20] == f"421 4.7.0 {HOSTNAME} Too many errors; closing connection\r\n".encode()
        assert raw.expect_closed() == b""  # the 5 commands after the 20th error: unanswered


def test_max_errors_is_configurable(receive_server) -> None:
    server = receive_server(max_errors=3)
    with server.raw() as raw:
        raw.greet()
        raw.send(b"FOO\r\nNOOP\r\nBAR\r\nRCPT TO:<x@localhost>\r\nNOOP\r\n")
        replies = raw.replies(5)
        assert [reply[:3] for reply in replies] == [b"500", b"250", b"500", b"503", b"421"]
        assert raw.expect_closed() == b""


def test_junk_commands_past_100_count_as_errors(receive_server) -> None:
    server = receive_server()  # max_errors 20
    with server.raw() as raw:
        raw.greet()
        raw.send(b"NOOP\r\n" * 100)
        assert raw.replies(100) == [b"250 2.0.0 Ok\r\n"] * 100
        raw.send(b"NOOP\r\n" * 25)
        replies = raw.replies(21)
        assert replies[:20] == [b"250 2.0.0 Ok\r\n"] * 20  # each reply is the same ...
        # ... but each of the 20 NOOPs past 100 was an error
        assert replies[20] == f"421 4.7.0 {HOSTNAME} Too many errors; closing connection\r\n".encode()
        assert raw.expect_closed() == b""
    wait_until(lambda: server.session_count() == 0, what="the session to end")


# --- DATA: bare line ends and smuggling ----------------------------------------------------


def test_bare_lf_in_data_is_refused_and_nothing_queued(receive_server) -> None:
    server = receive_server()
    with server.raw() as raw:
        open_data(raw)
        raw.send(b"Subject: x\r\n\r\nline one\nline two\r\n.\r\n")
        assert raw.reply().startswith(b"554 5.6.0 ")
        assert raw.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
    server.assert_no_leftovers()


SMUGGLING = {
    "LF.LF": b"\n.\n",
    "CRLF.LF": b"\r\n.\n",
    "LF.CRLF": b"\n.\r\n",
}


def smuggling_payload(end: bytes) -> bytes:
    """A message whose fake end is followed by a whole second transaction."""
    return (b"From: a@example.com\r\nSubject: outer\r\n\r\nouter body" + end +
            b"MAIL FROM:<spoofed@example.com>\r\n"
            b"RCPT TO:<victim@localhost>\r\n"
            b"DATA\r\n"
            b"From: ceo@localhost\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
            b".\r\n")


@pytest.mark.parametrize("end", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_end_markers_do_not_end_data_when_rejecting(receive_server, end: bytes) -> None:
    server = receive_server()  # bare_line_endings = reject (the default)
    with server.raw() as raw:
        open_data(raw)
        raw.send(smuggling_payload(end))
        assert raw.reply().startswith(b"554 5.6.0 ")
        # Exactly one reply for the whole payload: the "MAIL/RCPT/DATA" in it was content.
        assert raw.command(b"QUIT").startswith(b"221 ")
        assert raw.expect_closed() == b""
    server.assert_no_leftovers()


@pytest.mark.parametrize("end", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_end_markers_do_not_end_data_when_normalising(receive_server, end: bytes) -> None:
    server = receive_server(bare_line_endings="normalise")
    with server.raw() as raw:
        open_data(raw)
        raw.send(smuggling_payload(end))
        queue_id = queue_id_of(raw.reply())
        assert raw.command(b"QUIT").startswith(b"221 ")
        assert raw.expect_closed() == b""
    assert server.queued_ids() == [queue_id]  # one message, never two
    stored = server.read(queue_id)
    assert [r.address for r in stored.envelope.recipients] == ["user@localhost"]
    _, content = split_received(stored.content)
    # Every line end is CRLF now; the would-be second transaction is in the content.
    assert b"\n" not in content.replace(b"\r\n", b"")
    assert b"\r\nMAIL FROM:<spoofed@example.com>\r\n" in content
    assert content.endswith(b"smuggled body\r\n")


# --- sizes and loops ---------------------------------------------------------------------


def test_declared_size_over_the_limit_is_refused_at_mail(receive_server) -> None:
    server = receive_server(max_message_size=10_000)
    with server.raw() as raw:
        ehlo = raw.greet()
        assert b"250-SIZE 10000\r\n" in ehlo
        assert raw.command(b"MAIL FROM:<a@example.com> SIZE=10001").startswith(b"552 5.3.4 ")
        assert raw.command(b"MAIL FROM:<a@example.com> SIZE=10000").startswith(b"250 ")


def test_data_over_the_limit_is_drained_then_refused_and_the_session_goes_on(receive_server) -> None:
    limit = 100_000
    server = receive_server(max_message_size=limit)
    with server.raw() as raw:
        open_data(raw)
        line = b"x" * 998 + b"\r\n"
        raw.send(b"Subject: big\r\n\r\n" + line * 600)  # 600 kB: past the limit and the spill
        assert raw.nothing_more()  # no reply until the end of the data
        raw.send(b".\r\n")
        reply = raw.reply()
        assert reply.startswith(b"552 5.3.4 ") and str(limit).encode() in reply
        queue_id = send_one_message(raw, "small")
    assert server.queued_ids() == [queue_id]
    assert server.files("tmp") == []


def test_more_than_50_received_headers_is_a_loop(receive_server) -> None:
    server = receive_server()
    trace = b"".join(b"Received: from hop%d.example by hop%d.example; Sun, 29 Nov 2026 "
                     b"10:00:00 +0000\r\n" % (n, n + 1) for n in range(51))
    with server.raw() as raw:
        open_data(raw)
        raw.send(trace + b"Subject: loop\r\n\r\nbody\r\n.\r\n")
        assert raw.reply().startswith(b"554 5.4.6 ")
        raw.send(ENVELOPE)
        assert [reply[:3] for reply in raw.replies(3)] == [b"250", b"250", b"354"]
        raw.send(trace[: trace.index(b"Received: from hop50")] + b"Subject: 50\r\n\r\nok\r\n.\r\n")
        queue_id = queue_id_of(raw.reply())  # exactly 50 is still accepted
    assert server.queued_ids() == [queue_id]


# --- timing ------------------------------------------------------------------------------


def test_idle_timeout_closes_with_421(receive_server) -> None:
    server = receive_server(idle_timeout=1)
    with server.raw() as raw:
        raw.greet()
        started = time.monotonic()
        reply = raw.reply()
        assert reply == f"421 4.4.2 {HOSTNAME} Idle timeout; closing connection " \
                        "(RFC 5321 4.5.3.2)\r\n".encode()
        assert raw.expect_closed() == b""
        assert time.monotonic() - started < 8  # bounded, not a wall-clock speed claim


def test_idle_timeout_mid_data_leaves_nothing_behind(receive_server) -> None:
    server = receive_server(idle_timeout=1)
    with server.raw() as raw:
        open_data(raw)
        raw.send(b"Subject: stalled\r\n\r\n" + b"z" * 300_000)
        wait_until(lambda: server.files("tmp"), what="the content spilled to tmp/")
        assert raw.reply().startswith(b"421 4.4.2 ")
        assert raw.expect_closed() == b""
    server.assert_no_leftovers()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_client_that_never_reads_does_not_keep_its_connection(receive_server, loop: str) -> None:
    # Pipelined EHLOs bring back ten times their size; a client that never reads fills
    # every buffer, the server stops reading, and the 421 of the idle timeout cannot be
    # sent.  The socket must still go, or the client keeps a connection slot for ever.
    server = receive_server(loop=loop, idle_timeout=1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect((server.host, server.port))
        wait_until(lambda: server.session_count() == 1, what="the session to open")
        sock.setblocking(False)
        burst = b"EHLO client.test\r\n" * 4096
        for _ in range(256):  # until the server stops reading (at most 18 MB)
            try:
                sock.send(burst)
            except BlockingIOError:
                break
        wait_until(lambda: server.session_count() == 0, what="the server to drop the session")
        sock.settimeout(10)
        while True:  # what reached our buffer, then the reset
            try:
                if not sock.recv(65536):
                    break
            except ConnectionResetError:
                break
    finally:
        sock.close()


def test_talking_before_the_greeting_is_refused(receive_server) -> None:
    # The test client (127.0.0.1) must be outside relay_networks: those are greeted at once.
    server = receive_server(greeting_delay=0.5, relay_networks="10.0.0.0/8")
    with server.raw() as raw:
        raw.send(b"EHLO spambot.example\r\n")
        reply = raw.reply()
        assert reply.startswith(b"554 5.5.1 ") and b"before the 220" in reply
        assert raw.expect_closed() == b""
    with server.raw() as raw:  # a client that waits is greeted after the delay
        assert raw.reply().startswith(b"220 " + HOSTNAME.encode())
        assert raw.command(b"EHLO client.test").startswith(b"250-")


def test_relay_network_clients_are_greeted_without_the_delay(receive_server) -> None:
    server = receive_server(greeting_delay=30)  # 127.0.0.1 is in the default relay_networks
    with server.raw() as raw:
        raw.send(b"EHLO own-host.example\r\n")  # talks first: trusted, not refused
        assert raw.reply().startswith(b"220 " + HOSTNAME.encode())
        assert raw.reply().startswith(b"250-")
