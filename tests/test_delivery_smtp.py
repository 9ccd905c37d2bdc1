"""Outbound delivery over real sockets on 127.0.0.0/8, against the sinks of helpers.smtp_sinks.

Each sink stands for one MX host on its own loopback address.  Tests marked with the
`run` fixture run twice: on stock asyncio and on uvloop (the delivery workers' loop).
Timeouts are the RFC 5321 ones scaled down, so a silent peer costs well under a second.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import ssl
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from helpers.smtp_sinks import SMTPSink, refusing_address, sink_tls_context

from fastmta.config import load_config
from fastmta.delivery.smtp import (
    ClientSettings,
    DeliveryStatus,
    MessageSource,
    SMTPPool,
    Timeouts,
    deliver,
)

FAST = Timeouts().scaled(0.005)  # greeting 1.5 s, data end 3 s, connect 0.15 s
SETTINGS = ClientSettings("client.test", timeouts=FAST)
MESSAGE = (b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: test\r\n\r\n"
           b"Hello Bob.\r\n")

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coroutine: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            return loop_runner.run(coroutine)

    return runner


def mx(sink: SMTPSink, name: str = "mx1.test", preference: int = 10) -> tuple[str, str, int, int]:
    return (name, sink.host, sink.port, preference)


@dataclass
class Transcript:
    lines: list[str] = field(default_factory=list)

    def __call__(self, direction: str, line: str) -> None:
        self.lines.append(f"{direction} {line}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def statuses(results: list[Any]) -> list[tuple[str, DeliveryStatus, int | None]]:
    return [(r.recipient, r.status, r.code) for r in results]


# --- where the message goes ----------------------------------------------------------------


def test_delivers_to_the_first_candidate(run: Runner) -> None:
    with SMTPSink("127.0.0.2") as first, SMTPSink("127.0.0.3") as second:
        results = run(deliver([mx(first), mx(second, "mx2.test", 20)], "alice@example.com",
                              ["bob@example.org"], MESSAGE, settings=SETTINGS))
    assert statuses(results) == [("bob@example.org", DeliveryStatus.DELIVERED, 250)]
    assert results[0].host == f"mx1.test[127.0.0.2]:{first.port}" and results[0].remote
    assert second.connections == 0
    (message,) = first.messages
    assert (message.sender, message.recipients, message.helo) == (
        "alice@example.com", ["bob@example.org"], "client.test")
    assert message.content == MESSAGE
    assert message.mail_params == {"SIZE": str(len(MESSAGE))}


def test_falls_back_when_the_first_address_refuses(run: Runner) -> None:
    said = Transcript()
    with refusing_address("127.0.0.2") as (host, port), SMTPSink("127.0.0.3") as second:
        results = run(deliver([("mx1.test", host, port, 10), mx(second, "mx2.test", 20)],
                              "alice@example.com", ["bob@example.org"], MESSAGE,
                              settings=SETTINGS, transcript=said))
    assert results[0].status is DeliveryStatus.DELIVERED
    assert results[0].host == f"mx2.test[127.0.0.3]:{second.port}"
    assert len(second.messages) == 1
    assert said.lines[:4] == [
        f"--- Trying mx1.test[127.0.0.2]:{port} (MX preference 10)...",
        f"--- connect to mx1.test[127.0.0.2]:{port}: Connection refused",
        f"--- Trying mx2.test[127.0.0.3]:{second.port} (MX preference 20)...",
        f"--- Connected to mx2.test[127.0.0.3]:{second.port}."]
    assert f">>> MAIL FROM:<alice@example.com> SIZE={len(MESSAGE)}" in said.lines
    assert "<<< 250 2.0.0 Ok: queued as M1" in said.lines


@pytest.mark.parametrize("greeting,quits", [("421 4.3.2 too busy", False),
                                            ("450 4.3.2 try later", True),
                                            ("554 5.7.1 no SMTP service here", True)])
def test_falls_back_when_the_greeting_refuses(greeting: str, quits: bool) -> None:
    with SMTPSink("127.0.0.2", greeting=greeting) as first, SMTPSink("127.0.0.3") as second:
        results = asyncio.run(deliver([mx(first), mx(second, "mx2.test", 20)], "a@example.com",
                                      ["b@example.org"], MESSAGE, settings=SETTINGS))
        first.wait_until(lambda: all(s.closed for s in first.sessions))
    assert results[0].status is DeliveryStatus.DELIVERED and len(second.messages) == 1
    assert first.sessions[0].commands == (["QUIT"] if quits else [])


def test_every_candidate_failing_leaves_the_recipients_transient() -> None:
    with refusing_address("127.0.0.2") as (host, port), \
            SMTPSink("127.0.0.3", greeting="554 5.7.1 go away") as last:
        results = asyncio.run(deliver([("mx1.test", host, port, 10), mx(last, "mx2.test", 20)],
                                      "a@example.com", ["b@example.org", "c@example.org"],
                                      MESSAGE, settings=SETTINGS))
    assert [r.status for r in results] == [DeliveryStatus.TRANSIENT] * 2
    assert (results[0].code, results[0].enhanced, results[0].stage) == (554, "5.7.1", "greeting")
    assert results[0].describe() == (f"host mx2.test[127.0.0.3]:{last.port} said: 554 5.7.1 "
                                     "go away (in reply to greeting)")


def test_a_silent_server_times_out_and_the_next_candidate_gets_the_mail() -> None:
    settings = ClientSettings("client.test", timeouts=Timeouts().scaled(0.001))
    with SMTPSink("127.0.0.2", silent=True) as silent, SMTPSink("127.0.0.3") as second:
        results = asyncio.run(deliver([mx(silent), mx(second, "mx2.test", 20)], "a@example.com",
                                      ["b@example.org"], MESSAGE, settings=settings))
        only_silent = asyncio.run(deliver([mx(silent)], "a@example.com", ["b@example.org"],
                                          MESSAGE, settings=settings))
    assert results[0].status is DeliveryStatus.DELIVERED and silent.connections == 2
    assert only_silent[0].status is DeliveryStatus.TRANSIENT
    assert only_silent[0].describe() == (f"host mx1.test[127.0.0.2]:{silent.port}: timed out "
                                         "after 0.3 s while waiting for the greeting")


def test_a_lost_connection_after_the_data_is_not_retried_elsewhere() -> None:
    with SMTPSink("127.0.0.2", drop_after_data=True) as first, SMTPSink("127.0.0.3") as second:
        results = asyncio.run(deliver([mx(first), mx(second, "mx2.test", 20)], "a@example.com",
                                      ["b@example.org"], MESSAGE, settings=SETTINGS))
    assert results[0].status is DeliveryStatus.TRANSIENT
    assert results[0].text == (f"host mx1.test[127.0.0.2]:{first.port}: connection lost after "
                               "the end of DATA; the message may have been accepted and may "
                               "arrive twice")
    assert len(first.messages) == 1 and second.connections == 0  # a duplicate is avoided


# --- per-recipient verdicts --------------------------------------------------------------------


def test_each_recipient_gets_its_own_verdict() -> None:
    replies = {"gone@example.org": "550 5.1.1 <gone@example.org>: user unknown",
               "busy@example.org": "450 4.2.1 <busy@example.org>: mailbox busy"}
    with SMTPSink("127.0.0.2", rcpt_replies=replies) as sink:
        results = asyncio.run(deliver(
            [mx(sink)], "a@example.com",
            ["gone@example.org", "bob@example.org", "busy@example.org"], MESSAGE,
            settings=SETTINGS))
    assert statuses(results) == [("gone@example.org", DeliveryStatus.PERMANENT, 550),
                                 ("bob@example.org", DeliveryStatus.DELIVERED, 250),
                                 ("busy@example.org", DeliveryStatus.TRANSIENT, 450)]
    assert results[0].describe() == (f"host mx1.test[127.0.0.2]:{sink.port} said: 550 5.1.1 "
                                     "<gone@example.org>: user unknown (in reply to RCPT TO)")
    assert sink.messages[0].recipients == ["bob@example.org"]


def test_too_many_recipients_are_retried_in_a_new_transaction() -> None:
    """RFC 5321 4.5.3.1.10: a 452 to RCPT after others were accepted means "send the rest
    in another transaction"; a 452 in a transaction that delivers nothing is a verdict."""
    with SMTPSink("127.0.0.2", rcpt_replies={
            "later@example.org": "452 4.5.3 Too many recipients"}) as sink:
        results = asyncio.run(deliver([mx(sink)], "a@example.com",
                                      ["b@example.org", "later@example.org"], MESSAGE,
                                      settings=SETTINGS))
    assert statuses(results) == [("b@example.org", DeliveryStatus.DELIVERED, 250),
                                 ("later@example.org", DeliveryStatus.TRANSIENT, 452)]
    rcpts = [c for c in sink.sessions[0].commands if c.startswith("RCPT")]
    assert rcpts == ["RCPT TO:<b@example.org>", "RCPT TO:<later@example.org>",
                     "RCPT TO:<later@example.org>"]


def test_lmtp_reports_each_recipient_after_the_data() -> None:
    with SMTPSink("127.0.0.2", lmtp=True, lmtp_replies={
            "full@example.org": "452 4.2.2 <full@example.org> mailbox full"}) as sink:
        results = asyncio.run(deliver([mx(sink)], "a@example.com",
                                      ["bob@example.org", "full@example.org"], MESSAGE,
                                      settings=SETTINGS, lmtp=True))
    assert statuses(results) == [("bob@example.org", DeliveryStatus.DELIVERED, 250),
                                 ("full@example.org", DeliveryStatus.TRANSIENT, 452)]
    assert sink.sessions[0].commands[0] == "LHLO client.test"
    assert results[1].stage == "end of DATA"


def test_a_message_over_the_peer_size_limit_bounces_without_being_sent() -> None:
    with SMTPSink("127.0.0.2", size=50) as sink:
        results = asyncio.run(deliver([mx(sink)], "a@example.com", ["b@example.org"], MESSAGE,
                                      settings=SETTINGS))
    assert (results[0].status, results[0].code, results[0].enhanced) == (
        DeliveryStatus.PERMANENT, 552, "5.3.4")
    assert not results[0].remote
    assert not any(c.startswith("MAIL") for c in sink.sessions[0].commands)


def test_recipient_objects_carry_dsn_parameters_to_a_peer_that_offers_dsn() -> None:
    @dataclass
    class Recipient:  # what the spool hands over
        address: str
        params: dict[str, str | None]

    rcpts = [Recipient("b@example.org", {"NOTIFY": "SUCCESS,FAILURE"})]
    with SMTPSink("127.0.0.2", dsn=True) as with_dsn, SMTPSink("127.0.0.3") as without:
        for sink in (with_dsn, without):
            asyncio.run(deliver([mx(sink)], "a@example.com", rcpts, MESSAGE, settings=SETTINGS,
                                mail_params={"RET": "HDRS", "ENVID": "id42"}))
    assert with_dsn.messages[0].rcpt_params == [{"NOTIFY": "SUCCESS,FAILURE"}]
    assert with_dsn.messages[0].mail_params == {"SIZE": str(len(MESSAGE)), "RET": "HDRS",
                                                "ENVID": "id42"}
    assert without.messages[0].rcpt_params == [{}]


# --- content ------------------------------------------------------------------------------------


def test_dot_stuffing_is_byte_exact() -> None:
    content = (b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle.\r\n. space\r\n"
               b"\r\n.\r\nend without line end.")
    with SMTPSink("127.0.0.2") as sink:
        asyncio.run(deliver([mx(sink)], "a@example.com", ["b@example.org"], content,
                            settings=SETTINGS))
    (message,) = sink.messages
    assert message.wire == (b"Subject: dots\r\n\r\n..\r\n...\r\n..leading\r\nmiddle.\r\n.. space"
                            b"\r\n\r\n..\r\nend without line end.\r\n")
    assert message.content == content + b"\r\n"


def test_an_8bit_message_reaches_a_7bit_peer_as_quoted_printable() -> None:
    body = "Grüße aus Köln – 10 €\r\n".encode()
    content = b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
    with SMTPSink("127.0.0.2", eightbitmime=False) as old, SMTPSink("127.0.0.3") as new:
        for sink in (old, new):
            results = asyncio.run(deliver([mx(sink)], "a@example.com", ["b@example.org"],
                                          content, settings=SETTINGS))
            assert results[0].status is DeliveryStatus.DELIVERED
    converted = old.messages[0]
    assert converted.content.isascii() and "BODY" not in converted.mail_params
    parsed = email.message_from_bytes(converted.content, policy=email.policy.default)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_payload(decode=True) == body
    assert converted.mail_params["SIZE"] == str(len(converted.content))
    assert new.messages[0].content == content and new.messages[0].mail_params["BODY"] == "8BITMIME"


def test_an_8bit_message_that_cannot_be_converted_bounces() -> None:
    content = "From: José <josé@example.com>\r\nSubject: x\r\n\r\nhola\r\n".encode()
    with SMTPSink("127.0.0.2", eightbitmime=False) as sink:
        results = asyncio.run(deliver([mx(sink)], "a@example.com", ["b@example.org"], content,
                                      settings=SETTINGS))
    assert (results[0].status, results[0].enhanced) == (DeliveryStatus.PERMANENT, "5.6.7")
    assert "lacks 8BITMIME" in results[0].text and sink.messages == []


def test_a_large_message_is_streamed_from_a_file_range(tmp_path: Any) -> None:
    body = b"".join(b"line %07d ........................................\r\n" % n
                    for n in range(60000))  # about 3.5 MB
    path = tmp_path / "queue-file"
    path.write_bytes(b"ENVELOPE-HEADER\n" + body + b"TRAILER")
    fd = os.open(path, os.O_RDONLY)
    try:
        source = MessageSource.from_file(fd, len(b"ENVELOPE-HEADER\n"), len(body))
        with SMTPSink("127.0.0.2") as sink:
            results = asyncio.run(deliver([mx(sink)], "a@example.com", ["b@example.org"], source,
                                          settings=SETTINGS))
    finally:
        os.close(fd)
    assert results[0].status is DeliveryStatus.DELIVERED
    assert sink.messages[0].content == body


def test_a_queued_message_goes_out_from_the_spool_with_its_envelope(tmp_path: Any) -> None:
    from fastmta.spool import Envelope, Recipient, RecipientState, Spool

    spool = Spool(tmp_path / "spool")
    envelope = Envelope("alice@example.com",
                        [Recipient("bob@example.org", {"NOTIFY": "FAILURE"}),
                         Recipient("gone@example.org")], mail_params={"RET": "HDRS"})
    spool.enqueue(envelope, MESSAGE)
    message = spool.claim_next()
    assert message is not None
    with message, SMTPSink("127.0.0.2", dsn=True, rcpt_replies={
            "gone@example.org": "550 5.1.1 no such user"}) as sink:
        pending = message.pending_indices()
        results = asyncio.run(deliver(
            [mx(sink)], message.envelope.sender, [message.recipients[i] for i in pending],
            MessageSource.from_spool(message), settings=SETTINGS,
            mail_params=message.envelope.mail_params))
        message.mark_delivered([i for i, r in zip(pending, results)
                                if r.status is DeliveryStatus.DELIVERED])
        for index, result in zip(pending, results):
            if result.status is DeliveryStatus.PERMANENT:
                message.mark_failed([index], result.describe(), remote=result.host)
        message.complete()
    spool.close()
    assert sink.messages[0].content == MESSAGE
    assert sink.messages[0].rcpt_params == [{"NOTIFY": "FAILURE"}]
    assert [r.state for r in message.recipients] == [RecipientState.DELIVERED,
                                                     RecipientState.FAILED]
    assert message.recipients[1].last_error == results[1].describe()


def test_a_read_error_drops_the_connection_before_the_final_dot() -> None:
    def failing(size: int) -> Iterator[bytes]:
        yield MESSAGE
        raise OSError("disk gone")

    with SMTPSink("127.0.0.2") as sink:
        with pytest.raises(OSError, match="disk gone"):
            asyncio.run(deliver([mx(sink)], "a@example.com", ["b@example.org"],
                                MessageSource(len(MESSAGE) * 2, failing), settings=SETTINGS))
        sink.wait_until(lambda: all(s.closed for s in sink.sessions))
    assert sink.messages == []  # the peer never saw the end of the data


# --- peers without extensions, and TLS -------------------------------------------------------


@pytest.mark.parametrize("options,pipelined", [({"ehlo": False}, False),
                                               ({"pipelining": False}, False),
                                               ({}, True)])
def test_peers_without_extensions(options: dict[str, Any], pipelined: bool) -> None:
    with SMTPSink("127.0.0.2", **options) as sink:
        results = asyncio.run(deliver([mx(sink)], "a@example.com",
                                      ["b@example.org", "c@example.org"], MESSAGE,
                                      settings=SETTINGS))
    assert [r.status for r in results] == [DeliveryStatus.DELIVERED] * 2
    session = sink.sessions[0]
    assert session.pipelined is pipelined
    if not options.get("ehlo", True):
        assert session.commands[:3] == ["EHLO client.test", "HELO client.test",
                                        "MAIL FROM:<a@example.com>"]
    assert sink.messages[0].content == MESSAGE


def test_starttls_is_used_when_offered(run: Runner) -> None:
    server_context, _ = sink_tls_context("mx1.test")
    said = Transcript()
    with SMTPSink("127.0.0.2", tls_context=server_context) as sink:
        results = run(deliver([mx(sink)], "a@example.com", ["b@example.org"], MESSAGE,
                              settings=SETTINGS, transcript=said))
    assert results[0].status is DeliveryStatus.DELIVERED
    assert sink.sessions[0].commands[:3] == ["EHLO client.test", "STARTTLS", "EHLO client.test"]
    assert sink.messages[0].tls and sink.messages[0].content == MESSAGE
    assert any(line.startswith("--- TLS established: TLSv1.") for line in said.lines)


def test_a_failed_handshake_is_retried_without_starttls() -> None:
    server_context, _ = sink_tls_context("mx1.test")
    server_context.maximum_version = ssl.TLSVersion.TLSv1_2
    client_context = ssl.create_default_context()
    client_context.check_hostname, client_context.verify_mode = False, ssl.CERT_NONE
    client_context.minimum_version = ssl.TLSVersion.TLSv1_3  # no version in common
    settings = ClientSettings("client.test", timeouts=FAST, tls_context=client_context)
    with SMTPSink("127.0.0.2", tls_context=server_context) as sink:
        results = asyncio.run(deliver([mx(sink)], "a@example.com", ["b@example.org"], MESSAGE,
                                      settings=settings))
    assert results[0].status is DeliveryStatus.DELIVERED
    assert sink.connections == 2 and "STARTTLS" not in sink.sessions[1].commands
    assert not sink.messages[0].tls


def test_tls_can_be_switched_off_in_the_config(tmp_path: Any) -> None:
    config = load_config(overrides={"hostname": "client.test", "outbound_tls": "none",
                                    "spool": str(tmp_path)})
    server_context, _ = sink_tls_context("mx1.test")
    with SMTPSink("127.0.0.2", tls_context=server_context) as sink:
        asyncio.run(deliver([mx(sink)], "a@example.com", ["b@example.org"], MESSAGE,
                            settings=ClientSettings.from_config(config, timeouts=FAST)))
    assert "STARTTLS" not in sink.sessions[0].commands


# --- connection reuse and limits ----------------------------------------------------------------


def test_two_messages_to_one_destination_share_one_connection(run: Runner) -> None:
    async def two_messages(sink: SMTPSink) -> tuple[list[Any], int]:
        async with SMTPPool(SETTINGS) as pool:
            results = []
            for recipient in ("b@example.org", "c@example.org"):
                results += await pool.deliver([mx(sink)], "a@example.com", [recipient], MESSAGE,
                                              destination="smtp:example.org")
            return results, pool.connections_opened

    with SMTPSink("127.0.0.2") as sink:
        results, opened = run(two_messages(sink))
        sink.wait_until(lambda: all(s.closed for s in sink.sessions))
    assert [r.status for r in results] == [DeliveryStatus.DELIVERED] * 2
    assert opened == 1 and sink.connections == 1 and len(sink.messages) == 2
    commands = sink.sessions[0].commands
    assert commands.count("RSET") == 1 and commands[-1] == "QUIT"
    assert commands.index("RSET") > commands.index("DATA")


def test_a_connection_the_peer_closed_while_idle_is_replaced() -> None:
    async def two_messages(sink: SMTPSink) -> list[Any]:
        async with SMTPPool(SETTINGS) as pool:
            first = await pool.deliver([mx(sink)], "a@example.com", ["b@example.org"], MESSAGE)
            sink.wait_until(lambda: all(s.closed for s in sink.sessions))
            await asyncio.sleep(0.05)  # let the client notice the close
            return first + await pool.deliver([mx(sink)], "a@example.com", ["c@example.org"],
                                              MESSAGE)

    with SMTPSink("127.0.0.2", close_after_message=True) as sink:
        results = asyncio.run(two_messages(sink))
    assert [r.status for r in results] == [DeliveryStatus.DELIVERED] * 2
    assert sink.connections == 2


def test_connections_per_destination_are_limited(run: Runner) -> None:
    settings = ClientSettings("client.test", timeouts=FAST, destination_concurrency=2)

    async def many(sink: SMTPSink) -> list[Any]:
        async with SMTPPool(settings) as pool:
            batches = await asyncio.gather(*(
                pool.deliver([mx(sink)], "a@example.com", [f"r{n}@example.org"], MESSAGE)
                for n in range(6)))
        return [result for batch in batches for result in batch]

    with SMTPSink("127.0.0.2") as sink:
        results = run(many(sink))
    assert [r.status for r in results] == [DeliveryStatus.DELIVERED] * 6
    assert len(sink.messages) == 6
    assert sink.most_open_connections == 2 and sink.connections == 2


def test_recipients_beyond_the_transaction_limit_go_in_further_transactions() -> None:
    settings = ClientSettings("client.test", timeouts=FAST, max_recipients_per_transaction=2)
    recipients = [f"r{n}@example.org" for n in range(5)]
    with SMTPSink("127.0.0.2") as sink:
        results = asyncio.run(deliver([mx(sink)], "a@example.com", recipients, MESSAGE,
                                      settings=settings))
    assert [r.status for r in results] == [DeliveryStatus.DELIVERED] * 5
    assert [m.recipients for m in sink.messages] == [recipients[:2], recipients[2:4],
                                                     recipients[4:]]
    assert sink.connections == 1
