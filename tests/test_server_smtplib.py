"""The receive server as the standard library's smtplib sees it, over real sockets.

EHLO and HELO-only clients, several recipients, the session commands, and a message
read back from the spool byte for byte (envelope, our Received header on top,
dot-unstuffed content).  The in-process server runs on uvloop and, for the basic
exchange, on stock asyncio too (the transport must not depend on uvloop quirks).
"""

from __future__ import annotations

import smtplib

import pytest
from helpers.server import (
    HOSTNAME,
    message_bytes,
    split_received,
)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_ehlo_lists_extensions_with_the_size_limit(receive_server, loop: str) -> None:
    server = receive_server(loop=loop, max_message_size="2M")
    with server.smtp() as client:
        code, banner = client.ehlo("client.test")
        assert code == 250
        assert banner.splitlines()[0] == HOSTNAME.encode()
        features = client.esmtp_features
        assert features["size"] == str(2 * 1024 * 1024)
        for keyword in ("8bitmime", "pipelining", "enhancedstatuscodes", "smtputf8", "chunking",
                        "help"):
            assert keyword in features, keyword
        assert "starttls" not in features  # no certificate configured
        client.sendmail("sender@example.com", ["user@localhost"], message_bytes("ehlo"))
        assert client.quit()[0] == 221
    [queue_id] = server.queued_ids()
    stored = server.read(queue_id)
    received, rest = split_received(stored.content)
    assert received["proto"] == b"ESMTP"
    assert rest == message_bytes("ehlo")


def test_helo_only_client_is_served_as_plain_smtp(receive_server) -> None:
    server = receive_server()
    with server.smtp() as client:
        code, reply = client.helo("oldclient.test")
        assert (code, reply) == (250, HOSTNAME.encode())
        assert not client.does_esmtp
        # sendmail() sees helo_resp and does not try EHLO: an RFC 821 client.
        assert client.sendmail("old@example.com", ["user@localhost"], message_bytes("helo")) == {}
    [queue_id] = server.queued_ids()
    stored = server.read(queue_id)
    received, rest = split_received(stored.content)
    assert received["helo"] == b"oldclient.test"
    assert received["proto"] == b"SMTP"
    assert stored.envelope.helo == "oldclient.test"
    assert stored.envelope.protocol == "SMTP"
    assert stored.envelope.mail_params == {}
    assert rest == message_bytes("helo")


def test_sendmail_with_several_recipients(receive_server) -> None:
    server = receive_server()
    recipients = ["a@localhost", "b@localhost", "postmaster", "c@localhost"]
    with server.smtp() as client:
        refused = client.sendmail("sender@example.com", recipients, message_bytes("many"))
        assert refused == {}
    [queue_id] = server.queued_ids()
    stored = server.read(queue_id)
    assert stored.envelope.sender == "sender@example.com"
    assert [r.address for r in stored.envelope.recipients] == recipients
    received, _ = split_received(stored.content)
    assert received["for"] is None  # several recipients: none named (Bcc privacy)


def test_dot_leading_and_8bit_lines_arrive_byte_exact(receive_server) -> None:
    server = receive_server()
    body = (b"From: sender@example.com\r\n"
            b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n"
            b".one leading dot\r\n"
            b"..two leading dots\r\n"
            b".\r\n"  # a lone dot: the end marker if the client did not stuff it
            b"...\r\n"
            b"caf\xc3\xa9 \xff\xfe\x80 raw 8-bit\r\n"
            b" .indented dot\r\n"
            b"last line without dot\r\n")
    with server.smtp() as client:
        client.ehlo("client.test")
        assert client.sendmail("sender@example.com", ["user@localhost"], body,
                               mail_options=["BODY=8BITMIME"]) == {}
    [queue_id] = server.queued_ids()
    stored = server.read(queue_id)
    assert stored.queue == "incoming"
    envelope = stored.envelope
    assert envelope.sender == "sender@example.com"
    assert [(r.address, r.params) for r in envelope.recipients] == [("user@localhost", {})]
    # smtplib adds SIZE because we advertise it; the spool stores names upper-cased.
    assert envelope.mail_params == {"SIZE": str(len(body)), "BODY": "8BITMIME"}
    assert envelope.client_address == "127.0.0.1"
    assert envelope.helo == "client.test"
    received, rest = split_received(stored.content)
    assert (received["helo"], received["ip"], received["by"], received["proto"]) == (
        b"client.test", b"127.0.0.1", HOSTNAME.encode(), b"ESMTP")
    assert received["id"].decode() == queue_id
    assert received["for"] == b"user@localhost"
    assert rest == body


def test_session_commands(receive_server) -> None:
    server = receive_server()
    with server.smtp() as client:
        client.ehlo("client.test")
        assert client.noop() == (250, b"2.0.0 Ok")
        code, text = client.verify("user@localhost")
        assert code == 252 and text.startswith(b"2.0.0 ")
        code, text = client.expn("staff")
        assert code == 502 and text.startswith(b"5.5.1 ")
        code, text = client.docmd("HELP")
        assert code == 214 and b"MAIL" in text
        for verb in ("TURN", "SEND FROM:<a@b>", "SOML FROM:<a@b>", "SAML FROM:<a@b>"):
            assert client.docmd(verb)[0] == 502, verb
        # RSET ends the open transaction: RCPT afterwards is out of sequence.
        assert client.mail("sender@example.com")[0] == 250
        assert client.rcpt("user@localhost")[0] == 250
        assert client.rset() == (250, b"2.0.0 Ok: reset")
        code, text = client.rcpt("user@localhost")
        assert code == 503 and text.startswith(b"5.5.1 ")
        # A second MAIL inside an open transaction is refused too.
        assert client.mail("sender@example.com")[0] == 250
        assert client.mail("other@example.com")[0] == 503
        assert client.rset()[0] == 250
        code, text = client.quit()
        assert code == 221 and HOSTNAME.encode() in text
    assert server.queued_ids() == []


def test_mail_before_helo_is_a_bad_sequence(receive_server) -> None:
    server = receive_server()
    with server.raw() as raw:
        assert raw.reply().startswith(b"220 " + HOSTNAME.encode())
        assert raw.command(b"MAIL FROM:<a@example.com>").startswith(b"503 5.5.1 ")
        assert raw.command(b"FROB").startswith(b"500 5.5.2 ")
        assert raw.command(b"HELO").startswith(b"501 5.5.4 ")
        assert raw.command(b"HELO client.test") == f"250 {HOSTNAME}\r\n".encode()
        assert raw.command(b"MAIL FROM:<a@example.com> FROB=1").startswith(b"555 5.5.4 ")
        assert raw.command(b"MAIL FROM:<a@example.com>").startswith(b"250 2.1.0 ")
        assert raw.command(b"QUIT").startswith(b"221 2.0.0 ")
        assert raw.expect_closed() == b""


def test_refused_recipient_is_reported_by_sendmail(receive_server) -> None:
    server = receive_server(local_users="alice")
    with server.smtp() as client:
        refused = client.sendmail("sender@example.com", ["alice@localhost", "nobody@localhost"],
                                  message_bytes("partly"))
    unknown = (550, b"5.1.1 Recipient address rejected: no such user here")
    assert refused == {"nobody@localhost": unknown}
    [queue_id] = server.queued_ids()
    assert [r.address for r in server.read(queue_id).envelope.recipients] == ["alice@localhost"]
    with server.smtp() as client, pytest.raises(smtplib.SMTPRecipientsRefused):
        client.sendmail("sender@example.com", ["nobody@localhost"], message_bytes("none"))
