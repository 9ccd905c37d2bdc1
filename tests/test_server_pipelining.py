"""PIPELINING (RFC 2920) over a raw socket: many commands in one packet, answered in
order, the replies of one packet leaving in one write; several messages per
connection, including commands pipelined behind the end of the data, and a client
that half-closes its side after sending everything.
"""

from __future__ import annotations

import re
import socket

import pytest
from helpers.server import (
    HOSTNAME,
    message_bytes,
    queue_id_of,
    split_received,
)


def test_commands_in_one_packet_are_answered_in_order_in_one_batch(receive_server) -> None:
    server = receive_server()
    with server.raw() as raw:
        raw.reply()  # greeting
        raw.send(b"EHLO client.test\r\n"
                 b"NOOP\r\n"
                 b"MAIL FROM:<sender@example.com>\r\n"
                 b"RCPT TO:<a@localhost>\r\n"
                 b"RCPT TO:<someone@elsewhere.example>\r\n"  # from 127.0.0.1: relaying is allowed
                 b"RCPT TO:<bad address>\r\n"
                 b"RCPT TO:<b@localhost>\r\n"
                 b"DATA\r\n")
        # The server answers the whole packet with one write: the first recv (loopback,
        # far below one segment) already holds every reply.
        first = raw.recv_some()
        replies = raw.replies(8)
        assert b"".join(replies) == first
        assert replies[0].startswith(b"250-" + HOSTNAME.encode())
        assert b"250 HELP\r\n" in replies[0] and b"PIPELINING" in replies[0]
        assert replies[1] == b"250 2.0.0 Ok\r\n"
        assert replies[2].startswith(b"250 2.1.0 ")
        assert replies[3].startswith(b"250 2.1.5 ")
        assert replies[4].startswith(b"250 2.1.5 ")
        assert replies[5].startswith(b"501 5.1.3 ")
        assert replies[6].startswith(b"250 2.1.5 ")
        assert replies[7].startswith(b"354 ")
        raw.send(message_bytes("pipelined") + b".\r\nQUIT\r\n")
        queued, bye = raw.replies(2)
        assert bye.startswith(b"221 2.0.0 ")
        assert raw.expect_closed() == b""
    queue_id = queue_id_of(queued)
    stored = server.read(queue_id)
    assert [r.address for r in stored.envelope.recipients] == [
        "a@localhost", "someone@elsewhere.example", "b@localhost"]


def test_several_messages_in_one_connection_with_commands_behind_the_data(receive_server) -> None:
    server = receive_server()
    envelope = (b"MAIL FROM:<sender@example.com>\r\n"
                b"RCPT TO:<user@localhost>\r\n"
                b"DATA\r\n")
    with server.raw() as raw:
        raw.reply()
        raw.send(b"EHLO client.test\r\n" + envelope)
        assert [reply[:3] for reply in raw.replies(4)] == [b"250", b"250", b"250", b"354"]
        ids = []
        for number in range(1, 5):
            # The end of one message and the next transaction's commands in one packet:
            # the server holds them until the first message is durable, then goes on.
            raw.send(message_bytes(f"message {number}") + b".\r\n" + envelope)
            replies = raw.replies(4)
            ids.append(queue_id_of(replies[0]))
            assert [reply[:3] for reply in replies[1:]] == [b"250", b"250", b"354"]
        raw.send(message_bytes("message 5") + b".\r\nRSET\r\nQUIT\r\n")
        queued, reset, bye = raw.replies(3)
        ids.append(queue_id_of(queued))
        assert reset.startswith(b"250 2.0.0 ") and bye.startswith(b"221 ")
    assert len(set(ids)) == 5
    assert sorted(server.queued_ids()) == sorted(ids)
    for number, queue_id in enumerate(ids, 1):
        received, rest = split_received(server.read(queue_id).content)
        assert received["id"].decode() == queue_id
        assert rest == message_bytes(f"message {number}")


def test_whole_session_in_one_packet(receive_server) -> None:
    server = receive_server()
    session = (b"EHLO client.test\r\n"
               b"MAIL FROM:<>\r\n"
               b"RCPT TO:<postmaster@localhost>\r\n"
               b"DATA\r\n"
               + message_bytes("all at once", b".dot\r\n") + b".\r\n"
               b"QUIT\r\n")
    with server.raw() as raw:
        raw.reply()
        raw.send(session)
        replies = raw.replies(6)
        assert raw.expect_closed() == b""
    assert [reply[:3] for reply in replies] == [b"250", b"250", b"250", b"354", b"250", b"221"]
    stored = server.read(queue_id_of(replies[4]))
    assert stored.envelope.sender == ""
    assert split_received(stored.content)[1] == message_bytes("all at once", b"dot\r\n")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("quit_command", [b"QUIT\r\n", b""], ids=["quit", "no-quit"])
def test_client_half_close_still_gets_every_reply(receive_server, loop: str,
                                                  quit_command: bytes) -> None:
    # Scripts (and `nc -N`) send the whole session, then shut down their sending side
    # and read: the replies held behind a commit must still go out before we close.
    server = receive_server(loop=loop)
    transaction = (b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n")
    with server.raw() as raw:
        raw.reply()
        raw.send(b"EHLO client.test\r\n"
                 + transaction + message_bytes("first") + b".\r\n"
                 + transaction + message_bytes("second") + b".\r\n"
                 + quit_command)
        raw.sock.shutdown(socket.SHUT_WR)
        rest = raw.expect_closed()
    replies = re.findall(rb"(?m)^\d{3} .*\r\n", rest)
    codes = [reply[:3] for reply in replies]
    assert codes == [b"250", b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250"] \
        + ([b"221"] if quit_command else [])
    ids = [queue_id_of(replies[4]), queue_id_of(replies[8])]
    assert sorted(server.queued_ids()) == sorted(ids)
