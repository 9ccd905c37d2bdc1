"""Who the receive server accepts mail for, and from how many connections, over
real sockets: relay control (no open relay in any default), local users,
postmaster (RFC 5321 4.5.1), and the per-IP connection limit.

The tests connect from 127.0.0.1, which is a relay network by default; servers
here set relay_networks to 10.0.0.0/8 to see what an outside client sees.
"""

from __future__ import annotations

from helpers.server import (
    HOSTNAME,
    message_bytes,
    queue_id_of,
    wait_until,
)

OUTSIDE = {"relay_networks": "10.0.0.0/8"}


def rcpt_replies(server, *addresses: str) -> list[bytes]:
    with server.raw() as raw:
        raw.greet()
        assert raw.command(b"MAIL FROM:<sender@example.com>").startswith(b"250 ")
        return [raw.command(b"RCPT TO:<%s>" % address.encode()) for address in addresses]


def test_outside_client_cannot_relay_but_may_send_to_local_and_relay_domains(receive_server) -> None:
    server = receive_server(relay_domains="backup.example", **OUTSIDE)
    remote, local, relayed, wildcard = rcpt_replies(
        server, "someone@remote.example", "user@localhost", "user@backup.example",
        "user@sub.backup.example")
    assert remote == b"554 5.7.1 Relay access denied\r\n"
    assert local.startswith(b"250 2.1.5 ")
    assert relayed.startswith(b"250 2.1.5 ")
    assert wildcard.startswith(b"554 5.7.1 ")  # only "*.backup.example" would cover it


def test_relay_network_client_may_relay(receive_server) -> None:
    server = receive_server()  # default relay_networks: loopback
    [remote] = rcpt_replies(server, "someone@remote.example")
    assert remote.startswith(b"250 2.1.5 ")


def test_unknown_local_user_and_postmaster(receive_server) -> None:
    server = receive_server(local_users="alice,bob", local_domains="localhost,example.test",
                            **OUTSIDE)
    replies = rcpt_replies(server, "alice@localhost", "carol@localhost", "postmaster@localhost",
                           "PostMaster@Example.Test", "postmaster", "bob@example.test",
                           "nobody@example.test")
    codes = [reply[:9] for reply in replies]
    assert codes == [b"250 2.1.5", b"550 5.1.1", b"250 2.1.5", b"250 2.1.5", b"250 2.1.5",
                     b"250 2.1.5", b"550 5.1.1"]


def test_no_recipient_accepted_means_no_data(receive_server) -> None:
    server = receive_server(**OUTSIDE)
    with server.raw() as raw:
        raw.greet()
        raw.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@remote.example>\r\nDATA\r\n")
        mail, rcpt, data = raw.replies(3)
        assert mail.startswith(b"250 ")
        assert rcpt.startswith(b"554 5.7.1 ")
        assert data.startswith(b"554 5.5.1 No valid recipients")
        assert raw.nothing_more()  # no 354: what the client sends next is not content
    assert server.queued_ids() == []


def test_aliases_file_recipients_are_local_users(receive_server, tmp_path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("info: alice\nsales: alice, bob@remote.example\n")
    server = receive_server(local_users="alice", aliases_file=str(aliases), **OUTSIDE)
    info, sales, other = rcpt_replies(server, "info@localhost", "sales@localhost",
                                      "other@localhost")
    assert info.startswith(b"250 ") and sales.startswith(b"250 ")
    assert other.startswith(b"550 5.1.1 ")


def test_per_ip_connection_limit(receive_server) -> None:
    server = receive_server(max_connections_per_ip=2, **OUTSIDE)
    first, second = server.raw(), server.raw()
    try:
        first.greet()
        second.greet()
        with server.raw() as third:
            assert third.reply() == f"421 4.7.0 {HOSTNAME} Too many connections; " \
                                    "try again later\r\n".encode()
            assert third.expect_closed() == b""
        assert first.command(b"NOOP") == b"250 2.0.0 Ok\r\n"  # the others are unaffected
        assert first.command(b"QUIT").startswith(b"221 ")
        first.expect_closed()
    finally:
        first.close()
    # A slot is free again once the server has seen the first session end.
    wait_until(lambda: server.session_count() == 1, what="the closed session to be released")
    try:
        with server.raw() as again:
            assert again.greet().startswith(b"250-")
            again.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n")
            assert [reply[:3] for reply in again.replies(3)] == [b"250", b"250", b"354"]
            again.send(message_bytes("limit") + b".\r\n")
            assert queue_id_of(again.reply())
    finally:
        second.close()


def test_relay_networks_are_exempt_from_the_per_ip_limit(receive_server) -> None:
    server = receive_server(max_connections_per_ip=1)  # 127.0.0.1 is a relay network
    clients = [server.raw() for _ in range(3)]
    try:
        for client in clients:
            assert client.greet().startswith(b"250-")
    finally:
        for client in clients:
            client.close()
