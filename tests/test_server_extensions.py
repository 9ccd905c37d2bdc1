"""ESMTP extensions end to end over a raw socket: CHUNKING/BINARYMIME (RFC 3030) and
SMTPUTF8 (RFC 6531), each read back from the spool.
"""

from __future__ import annotations

from helpers.server import (
    message_bytes,
    queue_id_of,
    split_received,
)


def test_bdat_chunks_arrive_byte_exact(receive_server) -> None:
    server = receive_server()
    content = message_bytes("chunks", b".not stuffed\r\nbinary \x00\xff\r\n")
    with server.raw() as raw:
        raw.greet()
        raw.send(b"MAIL FROM:<sender@example.com> BODY=BINARYMIME\r\n"
                 b"RCPT TO:<user@localhost>\r\n"
                 b"BDAT 10\r\n" + content[:10] +
                 b"BDAT 0\r\n"
                 b"BDAT %d LAST\r\n" % (len(content) - 10) + content[10:] +
                 b"NOOP\r\n")
        mail, rcpt, first, empty, last, noop = raw.replies(6)
        assert mail.startswith(b"250 2.1.0 ") and rcpt.startswith(b"250 2.1.5 ")
        assert first == b"250 2.0.0 Ok: 10 octets received\r\n"
        assert empty == b"250 2.0.0 Ok: 0 octets received\r\n"
        assert noop == b"250 2.0.0 Ok\r\n"
    stored = server.read(queue_id_of(last))
    assert stored.envelope.mail_params == {"BODY": "BINARYMIME"}
    assert split_received(stored.content)[1] == content


def test_bdat_over_the_limit_is_skipped_and_refused(receive_server) -> None:
    server = receive_server(max_message_size=1000)
    with server.raw() as raw:
        raw.greet()
        # The 2000 octets are skipped by count, never read as commands.
        raw.send(b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<user@localhost>\r\n"
                 b"BDAT 2000 LAST\r\n" + b"QUIT\r\n" * 333 + b"xx" + b"NOOP\r\n")
        replies = raw.replies(4)
        assert replies[2].startswith(b"552 5.3.4 ")
        assert replies[3] == b"250 2.0.0 Ok\r\n"
    server.assert_no_leftovers()


def test_smtputf8_addresses_are_stored_as_sent(receive_server) -> None:
    server = receive_server()
    sender, recipient = "δοκιμή@παράδειγμα.δοκιμή", "ünïcode@localhost"
    with server.raw() as raw:
        raw.greet()
        assert raw.command(f"MAIL FROM:<{sender}>".encode()).startswith(b"553 5.6.7 ")
        raw.send(f"MAIL FROM:<{sender}> SMTPUTF8\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode())
        assert [reply[:3] for reply in raw.replies(3)] == [b"250", b"250", b"354"]
        raw.send("Subject: ünï\r\n\r\nbody\r\n.\r\n".encode())
        queue_id = queue_id_of(raw.reply())
    stored = server.read(queue_id)
    assert stored.envelope.sender == sender
    assert [r.address for r in stored.envelope.recipients] == [recipient]
    assert stored.envelope.mail_params == {"SMTPUTF8": None}
    received, content = split_received(stored.content)
    assert received["proto"] == b"UTF8SMTP"
    assert content == "Subject: ünï\r\n\r\nbody\r\n".encode()
