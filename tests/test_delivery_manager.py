"""The queue manager end to end: real spool files, real Maildirs, a DNS server and SMTP sinks on
127.0.0.0/8, and a fake clock for retries, expiry and delay warnings.

World: example.com is local (users bob and dave, alias team -> bob + carol@example.net,
catch-all catchall@example.com); example.net's MX are mx1 (refuses connections) then mx2
(a sink); example.org (the senders' domain) has a sink of its own that collects the DSNs.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from helpers.dns_server import DNSServer
from helpers.smtp_sinks import SinkMessage, SMTPSink

from fastmta.config import Config, load_config
from fastmta.delivery.manager import QueueManager, recover_orphans
from fastmta.spool import Envelope, QueueAdmin, Recipient, RecipientState, Spool

CONTENT = (b"Received: from client.example.org by mx.test with ESMTP id X; date\r\n"
           b"Message-ID: <m1@example.org>\r\nSubject: hello\r\nFrom: alice@example.org\r\n\r\n"
           b"Hi.\r\n.a dot line\r\n")
CONTENT_LF = CONTENT.replace(b"\r\n", b"\n")


class FakeClock:
    """Starts a second ahead of the real clock, so messages queued now are already "due"."""

    def __init__(self) -> None:
        self.now = time.time() + 1

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    tmp_path: Path
    dns: DNSServer
    mx2: SMTPSink  # example.net's working MX
    senders_mx: SMTPSink  # example.org's MX: DSNs land here
    port: int
    clock: FakeClock
    spool: Spool
    settings: dict[str, Any]

    def config(self, **overrides: Any) -> Config:
        return load_config(overrides={**self.settings, **overrides})

    def queue(self, *recipients: str | tuple[str, dict[str, str | None]],
              sender: str = "alice@example.org", content: bytes = CONTENT,
              mail_params: dict[str, str | None] | None = None) -> str:
        rcpts = [Recipient(r) if isinstance(r, str) else Recipient(r[0], r[1]) for r in recipients]
        return self.spool.enqueue(Envelope(sender, rcpts, dict(mail_params or {}),
                                           client_address="192.0.2.7", helo="client.example.org"),
                                  content)

    def run(self, **overrides: Any) -> int:
        """One pass of a fresh queue manager over everything due at the fake clock."""
        async def main() -> int:
            manager = QueueManager(self.config(**overrides), self.spool, clock=self.clock)
            try:
                return await manager.run_until_idle()
            finally:
                await manager.close()
        return asyncio.run(main())

    def maildir(self, user: str) -> list[bytes]:
        new = self.tmp_path / "spool" / "mail" / user / "new"
        return [path.read_bytes() for path in sorted(new.iterdir())] if new.is_dir() else []

    def queued(self) -> list[str]:
        return [name for queue in ("incoming", "active", "deferred", "hold", "corrupt")
                for name in os.listdir(self.tmp_path / "spool" / queue)]

    def dsns(self) -> list[EmailMessage]:
        found = []
        for message in self.senders_mx.messages:
            assert message.sender == "", "a DSN must have the null sender"
            parsed = email.message_from_bytes(message.content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            found.append(parsed)
        return found


@pytest.fixture
def world(tmp_path: Path, dns_server: DNSServer) -> Iterator[World]:
    (tmp_path / "aliases").write_text("team: bob, carol@example.net\nloop: loop@example.net\n")
    with SMTPSink("127.0.0.3", name="mx2.example.net") as mx2, \
            SMTPSink("127.0.0.5", mx2.port, name="mx.example.org") as senders_mx, \
            socket.socket() as refusing:
        refusing.bind(("127.0.0.4", mx2.port))  # bound, never listening: connections refused
        dns_server.add("example.net", "MX", ["10 mx1.example.net", "20 mx2.example.net"])
        dns_server.add("mx1.example.net", "A", "127.0.0.4")
        dns_server.add("mx2.example.net", "A", "127.0.0.3")
        dns_server.add("example.org", "MX", "10 mx.example.org")
        dns_server.add("mx.example.org", "A", "127.0.0.5")
        settings = {"spool": str(tmp_path / "spool"), "hostname": "mx.test",
                    "local_domains": "example.com", "local_users": "bob,dave",
                    "aliases_file": str(tmp_path / "aliases"),
                    "catch_all": "catchall@example.com", "dns_nameservers": dns_server.nameserver,
                    "outbound_port": mx2.port, "connect_timeout": "2"}
        spool = Spool(tmp_path / "spool")
        yield World(tmp_path, dns_server, mx2, senders_mx, mx2.port, FakeClock(), spool, settings)
        spool.close()


def the_only(messages: list[SinkMessage]) -> SinkMessage:
    assert len(messages) == 1, messages
    return messages[0]


def status_fields(report: EmailMessage) -> list[dict[str, str]]:
    """The per-recipient blocks of a DSN's message/delivery-status part."""
    part = report.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    return [dict(block.items()) for block in part.get_payload()[1:]]


# --- local ------------------------------------------------------------------------------------


def test_local_mail_lands_in_each_users_maildir_byte_for_byte(world: World) -> None:
    world.queue("bob@example.com", "Dave@Example.com")
    assert world.run() == 1
    assert world.maildir("bob") == [b"Return-Path: <alice@example.org>\n"
                                    b"Delivered-To: bob@example.com\n" + CONTENT_LF]
    assert world.maildir("dave") == [b"Return-Path: <alice@example.org>\n"
                                     b"Delivered-To: dave@example.com\n" + CONTENT_LF]
    assert world.queued() == []


def test_aliases_expand_forward_and_the_catch_all_takes_unknown_users(world: World) -> None:
    world.queue("team@example.com", "bob@example.com", "nobody@example.com")
    world.run()
    assert len(world.maildir("bob")) == 1  # bob directly and through team: one copy
    assert world.maildir("catchall") == [b"Return-Path: <alice@example.org>\n"
                                         b"Delivered-To: catchall@example.com\n" + CONTENT_LF]
    forwarded = the_only(world.mx2.messages)  # team's remote member, as a new message
    assert forwarded.sender == "alice@example.org"
    assert forwarded.recipients == ["carol@example.net"]
    assert forwarded.content == b"Delivered-To: team@example.com\r\n" + CONTENT
    assert world.queued() == []


def test_many_messages_for_one_mailbox_share_their_flushes(world: World) -> None:
    for number in range(150):
        world.queue("bob@example.com", content=b"Subject: msg %d\r\n\r\nhi\r\n" % number)

    async def main() -> QueueManager:
        manager = QueueManager(world.config(), world.spool, clock=world.clock)
        try:
            assert await manager.run_until_idle() == 150
        finally:
            await manager.close()
        return manager

    manager = asyncio.run(main())
    subjects = sorted(int(copy.split(b"Subject: msg ")[1].split(b"\n")[0])
                      for copy in world.maildir("bob"))
    assert subjects == list(range(150))
    assert world.queued() == []
    # The attempts under way share one batch and one flush of new/, not one per message.
    assert manager.local.maildir.directory_fsyncs == manager.local_batches.batches <= 10


# --- remote ------------------------------------------------------------------------------------


def test_remote_mail_reaches_the_mx_falling_back_past_one_that_refuses(world: World) -> None:
    world.queue("carol@example.net", "erin@example.net",
                mail_params={"BODY": "8BITMIME"})
    world.run()
    message = the_only(world.mx2.messages)
    assert message.sender == "alice@example.org"
    assert message.recipients == ["carol@example.net", "erin@example.net"]
    assert message.content == CONTENT
    assert world.mx2.sessions[0].helo == "mx.test"
    assert world.queued() == []


def test_a_4xx_defers_with_the_next_try_stored_then_a_later_try_delivers(world: World) -> None:
    world.mx2.rcpt_replies["carol@example.net"] = "451 4.7.1 Greylisted, come back later"
    queue_id = world.queue("carol@example.net", "erin@example.net")
    world.run()
    assert [m.recipients for m in world.mx2.messages] == [["erin@example.net"]]
    deferred = world.tmp_path / "spool" / "deferred" / queue_id
    assert os.stat(deferred).st_mtime == pytest.approx(world.clock.now + 300, abs=0.01)
    entry = QueueAdmin(world.spool).show(queue_id)
    carol, erin = entry.recipients
    assert (carol.state, erin.state) == (RecipientState.DEFERRED, RecipientState.DELIVERED)
    assert carol.last_error == "451 4.7.1 Greylisted, come back later"
    assert carol.remote == f"mx2.example.net[127.0.0.3]:{world.port}"
    # A restarted worker (a new Spool object) keeps the schedule: not due before the mtime.
    restarted = Spool(world.tmp_path / "spool")
    assert restarted.claim_next(now=world.clock.now + 299) is None
    restarted.close()
    world.clock.advance(299)
    assert world.run() == 0
    del world.mx2.rcpt_replies["carol@example.net"]
    world.clock.advance(1)
    assert world.run() == 1
    assert [m.recipients for m in world.mx2.messages] == [["erin@example.net"],
                                                          ["carol@example.net"]]
    assert world.queued() == [] and world.dsns() == []


def test_local_and_remote_recipients_of_one_message_each_get_one_copy(world: World) -> None:
    world.queue("bob@example.com", "carol@example.net", "dave@example.com", "erin@example.net")
    world.run()
    assert len(world.maildir("bob")) == 1 and len(world.maildir("dave")) == 1
    assert the_only(world.mx2.messages).recipients == ["carol@example.net", "erin@example.net"]
    assert world.queued() == [] and world.dsns() == []


def test_a_retry_after_a_remote_4xx_does_not_repeat_the_local_copy(world: World) -> None:
    world.mx2.rcpt_replies["carol@example.net"] = "451 4.7.1 Greylisted, come back later"
    queue_id = world.queue("bob@example.com", "carol@example.net")
    world.run()
    bob, carol = QueueAdmin(world.spool).show(queue_id).recipients
    assert (bob.state, carol.state) == (RecipientState.DELIVERED, RecipientState.DEFERRED)
    del world.mx2.rcpt_replies["carol@example.net"]
    world.clock.advance(300)
    assert world.run() == 1
    assert len(world.maildir("bob")) == 1
    assert [m.recipients for m in world.mx2.messages] == [["carol@example.net"]]
    assert world.queued() == []


def test_a_5xx_sends_the_sender_one_dsn_with_the_remote_reply(world: World) -> None:
    world.mx2.rcpt_replies["gone@example.net"] = "550 5.1.1 <gone@example.net>: no such user"
    world.queue(("gone@example.net", {"ORCPT": "rfc822;Gone@example.net"}), "carol@example.net")
    world.run()
    assert [m.recipients for m in world.mx2.messages] == [["carol@example.net"]]
    (report,) = world.dsns()
    assert report.get_content_type() == "multipart/report"
    assert the_only(world.senders_mx.messages).recipients == ["alice@example.org"]
    (block,) = status_fields(report)
    assert block["Final-Recipient"] == "rfc822; gone@example.net"
    assert block["Original-Recipient"] == "rfc822; Gone@example.net"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx2.example.net"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <gone@example.net>: no such user"
    headers = report.get_payload()[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: hello" in headers.get_payload(decode=True)
    assert world.queued() == []


def test_expiry_bounces_with_the_last_error_and_removes_the_message(world: World) -> None:
    world.mx2.rcpt_replies["carol@example.net"] = "451 4.3.0 mailbox locked"
    world.queue("carol@example.net")
    world.run()
    assert world.dsns() == []
    world.clock.advance(5 * 86400)
    world.run()
    (report,) = world.dsns()
    (block,) = status_fields(report)
    assert block["Action"] == "failed"
    assert block["Status"] == "4.4.7"
    assert block["Diagnostic-Code"] == "smtp; 451 4.3.0 mailbox locked"
    assert "gave up after 5 days" in " ".join(report.get_payload()[0].get_content().split())
    assert world.queued() == []


def test_a_null_sender_message_is_never_bounced(world: World, caplog: pytest.LogCaptureFixture
                                                ) -> None:
    world.mx2.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
    world.mx2.rcpt_replies["busy@example.net"] = "451 4.3.0 busy"
    world.queue("gone@example.net", sender="")
    world.queue("busy@example.net", sender="")
    with caplog.at_level(logging.WARNING, logger="fastmta.delivery"):
        world.run()
        world.clock.advance(5 * 86400)  # the bounce lifetime
        world.run()
    assert world.dsns() == [] and world.queued() == []
    assert caplog.text.count("dropped") == 2


def test_the_delay_warning_goes_out_once(world: World) -> None:
    world.mx2.rcpt_replies["carol@example.net"] = "451 4.3.0 busy"
    world.queue("carol@example.net")
    world.run(delay_warning="1h")
    world.clock.advance(3600)
    world.run(delay_warning="1h")
    (warning,) = world.dsns()
    assert warning["Subject"].startswith("Delayed Mail")
    (block,) = status_fields(warning)
    assert block["Action"] == "delayed" and block["Status"] == "4.3.0"
    assert "Will-Retry-Until" in block
    for _ in range(3):
        world.clock.advance(4000)
        world.run(delay_warning="1h")
    assert len(world.dsns()) == 1
    assert len(world.queued()) == 1


def test_notify_never_gets_no_dsn_and_ret_full_gets_the_whole_message(world: World) -> None:
    world.mx2.rcpt_replies["gone@example.net"] = "550 5.1.1 no such user"
    world.queue(("gone@example.net", {"NOTIFY": "NEVER"}))
    world.run()
    assert world.dsns() == [] and world.queued() == []
    world.queue("gone@example.net", mail_params={"RET": "FULL", "ENVID": "e1"})
    world.run()
    (report,) = world.dsns()
    assert report.get_payload()[2].get_content_type() == "message/rfc822"
    assert CONTENT in the_only(world.senders_mx.messages).content


def test_transport_map_discard_and_error(world: World) -> None:
    world.queue("x@junk.test", "y@closed.test")
    world.run(transport_map="junk.test=discard,closed.test=error:5.7.1 we do not serve this domain")
    (block,) = status_fields(the_only(world.dsns()))
    assert block["Final-Recipient"] == "rfc822; y@closed.test"
    assert block["Status"] == "5.7.1"
    assert "we do not serve this domain" in block["Diagnostic-Code"]
    assert world.queued() == [] and world.mx2.messages == []


def test_an_alias_that_forwards_back_to_itself_is_a_loop_not_a_storm(world: World) -> None:
    world.queue("loop@example.com", content=b"Delivered-To: loop@example.com\r\n" + CONTENT)
    world.run()
    (block,) = status_fields(the_only(world.dsns()))
    assert block["Status"] == "5.4.6"
    assert world.mx2.messages == [] and world.queued() == []


# --- stopping and crashes -------------------------------------------------------------------------


def test_stopping_gives_up_a_stuck_delivery_and_keeps_what_was_recorded(world: World) -> None:
    world.queue("bob@example.com", "stuck@slow.test")
    with SMTPSink("127.0.0.6", world.port, silent=True) as silent:
        world.dns.add("slow.test", "A", "127.0.0.6")

        async def main() -> None:
            manager = QueueManager(world.config(), world.spool, clock=world.clock)
            stop = asyncio.Event()
            running = asyncio.create_task(manager.run(stop, drain_timeout=0.3))
            while not silent.sessions:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(running, 5)
            await manager.close()

        asyncio.run(main())
    (queue_id,) = os.listdir(world.tmp_path / "spool" / "incoming")
    bob, stuck = QueueAdmin(world.spool).show(queue_id).recipients
    assert bob.state is RecipientState.DELIVERED and stuck.state is RecipientState.PENDING
    assert len(world.maildir("bob")) == 1
    assert os.listdir(world.tmp_path / "spool" / "active") == []


def test_mail_queued_while_a_delivery_is_under_way_goes_out_without_waiting_for_a_scan(
        world: World) -> None:
    world.queue("stuck@slow.test")
    with SMTPSink("127.0.0.6", world.port, silent=True) as silent:
        world.dns.add("slow.test", "A", "127.0.0.6")

        async def main() -> None:
            # An idle worker looks at the queue once a minute; a busy one every 50 ms.
            manager = QueueManager(world.config(queue_scan_interval="60"), world.spool,
                                   clock=world.clock)
            stop = asyncio.Event()
            running = asyncio.create_task(manager.run(stop, drain_timeout=0.3))
            while not silent.sessions:  # the first attempt hangs on the silent MX
                await asyncio.sleep(0.01)
            world.queue("bob@example.com")
            for _ in range(1000):  # up to 10 s, far less than the 60 s interval
                if world.maildir("bob"):
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(running, 5)
            await manager.close()

        asyncio.run(main())
    assert len(world.maildir("bob")) == 1


def test_orphaned_active_files_go_back_unless_a_live_worker_holds_them(world: World) -> None:
    world.queue("bob@example.com")
    world.queue("dave@example.com")
    other = Spool(world.tmp_path / "spool")
    dead = other.claim_next()  # claimed, never locked, then "the worker died"
    assert dead is not None
    dead.close()
    assert recover_orphans(world.spool, min_age=60) == (0, 1)  # just claimed: maybe not locked yet
    live = other.claim_next()
    assert live is not None
    import fcntl
    fcntl.flock(live.fileno(), fcntl.LOCK_EX)
    assert recover_orphans(world.spool, min_age=0) == (1, 0)
    assert os.listdir(world.tmp_path / "spool" / "active") == [live.queue_id]
    assert os.listdir(world.tmp_path / "spool" / "incoming") == [dead.queue_id]
    live.release()
    other.close()


def test_lmtp_gives_each_recipient_its_own_outcome(world: World) -> None:
    with SMTPSink("127.0.0.7", lmtp=True, lmtp_replies={
            "full@lmtp.test": "452 4.2.2 mailbox full",
            "gone@lmtp.test": "550 5.1.1 no such mailbox"}) as lmtp:
        transport = f"lmtp.test=lmtp:[127.0.0.7]:{lmtp.port}"
        queue_id = world.queue("ok@lmtp.test", "full@lmtp.test", "gone@lmtp.test")
        world.run(transport_map=transport)
        assert the_only(lmtp.messages).recipients == ["ok@lmtp.test", "full@lmtp.test",
                                                      "gone@lmtp.test"]
    ok, full, gone = QueueAdmin(world.spool).show(queue_id).recipients
    assert (ok.state, full.state, gone.state) == (
        RecipientState.DELIVERED, RecipientState.DEFERRED, RecipientState.FAILED)
    assert full.last_error == "452 4.2.2 mailbox full"
    (block,) = status_fields(the_only(world.dsns()))
    assert block["Final-Recipient"] == "rfc822; gone@lmtp.test"


def test_a_dns_failure_defers_instead_of_bouncing(world: World) -> None:
    world.dns.fail("example.net", "servfail")
    queue_id = world.queue("carol@example.net")
    world.run()
    (carol,) = QueueAdmin(world.spool).show(queue_id).recipients
    assert carol.state is RecipientState.DEFERRED
    assert carol.last_error and carol.last_error.startswith("4.")
    world.dns.heal("example.net")
    world.clock.advance(300)
    world.run()
    assert the_only(world.mx2.messages).recipients == ["carol@example.net"]
    assert world.queued() == [] and world.dsns() == []
