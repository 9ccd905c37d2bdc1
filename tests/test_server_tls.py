"""STARTTLS (RFC 3207) over real sockets, with a certificate made in the test (trustme).

After the handshake the session starts over (EHLO needed again, RFC 3207 4.2), the
Received header says ESMTPS, and plaintext pipelined behind STARTTLS is never
executed (RFC 3207 5; the CVE-2011-0411 class of attack).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from helpers.server import (
    HOSTNAME,
    RawClient,
    make_tls_files,
    message_bytes,
    queue_id_of,
    split_received,
)


@pytest.fixture
def tls_server(receive_server, tmp_path: Path):
    files = make_tls_files(tmp_path)
    server = receive_server(tls_cert=str(files.cert), tls_key=str(files.key))
    return server, files.client_context


def test_starttls_with_smtplib(tls_server) -> None:
    server, context = tls_server
    with server.smtp() as client:
        client.ehlo("client.test")
        assert "starttls" in client.esmtp_features
        code, text = client.starttls(context=context)
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        # The session forgot the EHLO: MAIL before a new EHLO is out of sequence.
        code, text = client.docmd("MAIL FROM:<sender@example.com>")
        assert code == 503 and b"HELO/EHLO" in text
        client.ehlo("client.test")
        assert "starttls" not in client.esmtp_features  # not offered twice
        assert client.docmd("STARTTLS")[0] == 554  # already active
        assert client.sendmail("sender@example.com", ["user@localhost"],
                               message_bytes("secret")) == {}
    [queue_id] = server.queued_ids()
    stored = server.read(queue_id)
    received, rest = split_received(stored.content)
    assert received["proto"] == b"ESMTPS"
    assert stored.envelope.protocol == "ESMTPS"
    assert rest == message_bytes("secret")


def test_starttls_without_a_certificate_is_refused(receive_server) -> None:
    server = receive_server()
    with server.smtp() as client:
        client.ehlo("client.test")
        assert "starttls" not in client.esmtp_features
        code, text = client.docmd("STARTTLS")
        assert code == 502 and text.startswith(b"5.5.1 ")
        assert client.noop()[0] == 250  # the session goes on in plaintext


@pytest.mark.parametrize("injected", [
    b"RSET\r\n",
    b"HELP\r\n",
    b"EHLO evil.example\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@localhost>\r\n",
])
def test_plaintext_pipelined_after_starttls_is_never_executed(tls_server, injected: bytes) -> None:
    server, context = tls_server
    raw = RawClient(server.host, server.port)
    try:
        raw.greet()
        raw.send(b"STARTTLS\r\n" + injected)
        assert raw.reply() == b"220 2.0.0 Ready to start TLS\r\n"
        assert raw.buffer == b""  # no plaintext answer to the injected commands
        tls = context.wrap_socket(raw.sock, server_hostname=HOSTNAME)
        raw.sock = tls
        # The first reply inside TLS answers our NOOP, not anything injected before.
        assert raw.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
        # And the injected EHLO/MAIL left no state behind: EHLO is needed again.
        assert raw.command(b"MAIL FROM:<sender@example.com>").startswith(b"503 5.5.1 ")
        assert raw.command(b"EHLO client.test").startswith(b"250-" + HOSTNAME.encode())
        raw.send(b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n")
        assert [reply[:3] for reply in raw.replies(3)] == [b"250", b"250", b"354"]
        raw.send(message_bytes("after tls") + b".\r\nQUIT\r\n")
        queued, bye = raw.replies(2)
        assert bye.startswith(b"221 ")
    finally:
        raw.close()
    assert server.queued_ids() == [queue_id_of(queued)]
    stored = server.read(queue_id_of(queued))
    assert stored.envelope.sender == "sender@example.com"
    assert [r.address for r in stored.envelope.recipients] == ["user@localhost"]
    received, _ = split_received(stored.content)
    assert (received["helo"], received["proto"]) == (b"client.test", b"ESMTPS")


def test_failed_handshake_closes_only_that_session(tls_server) -> None:
    server, context = tls_server
    with server.raw() as raw:
        raw.greet()
        assert raw.command(b"STARTTLS").startswith(b"220 ")
        raw.send(b"this is not a TLS client hello\r\n" * 4)
        raw.expect_closed()
    with server.smtp() as client:  # the server still serves, TLS included
        client.starttls(context=context)
        client.ehlo("client.test")
        assert client.noop()[0] == 250


def test_untrusted_client_context_fails_cleanly(tls_server) -> None:
    server, _ = tls_server
    strict = ssl.create_default_context()  # does not trust the test CA
    with server.smtp() as client:
        client.ehlo("client.test")
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=strict)
    with server.smtp() as client:
        assert client.noop()[0] == 250


def test_plaintext_sent_after_the_220_breaks_the_handshake_unanswered(tls_server) -> None:
    server, context = tls_server
    with server.raw() as raw:
        raw.greet()
        assert raw.command(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
        raw.send(b"RSET\r\n")  # its own packet, where the client hello should be
        with pytest.raises((ssl.SSLError, ConnectionError)):
            context.wrap_socket(raw.sock, server_hostname=HOSTNAME)
        assert raw.buffer == b""
    assert server.queued_ids() == []
