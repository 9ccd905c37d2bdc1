"""The sans-IO SMTP/LMTP client, replayed against recorded server dialogues.

Each dialogue is the server's side of a session as bytes.  `converse()` plays it to a
ClientConnection that reacts like the transport does (send the message when Ready,
the content on SendContent, QUIT at the end) and collects what the client sent and
the events it gave.  Every dialogue is also fed split at every byte, and one byte at
a time: the client must send the same bytes and give the same events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fastmta.protocol.client import (
    ClientConnection,
    ClientEvent,
    ClientState,
    Closed,
    Direction,
    Ready,
    ReplyError,
    ReplyParser,
    SendContent,
    SessionFailed,
    Stage,
    Transaction,
    TransactionDone,
    UpgradeTLS,
    parse_extensions,
)
from fastmta.protocol.replies import Reply

GREETING = b"220 mx.example.org ESMTP Postfix (Debian/GNU)\r\n"
POSTFIX_EHLO = (b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n"
                b"250-ETRN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n"
                b"250-SMTPUTF8\r\n250 CHUNKING\r\n")
PLAIN_EHLO = b"250-old.example.org Hello\r\n250-SIZE 1000000\r\n250 HELP\r\n"
CONTENT = b"Subject: test\r\n\r\nHello.\r\n"


@dataclass
class Conversation:
    conn: ClientConnection
    sent: bytes = b""
    events: list[ClientEvent] = field(default_factory=list)

    def commands(self) -> list[bytes]:
        return self.sent.split(b"\r\n")[:-1]

    @property
    def outcomes(self) -> list[tuple[str, int, str, Stage]]:
        done = [e for e in self.events if isinstance(e, TransactionDone)]
        assert len(done) == 1, self.events
        return [(o.recipient, o.reply.code, o.reply.enhanced, o.stage) for o in done[0].outcomes]


def converse(chunks: Iterator[bytes] | list[bytes], spec: Transaction | None = None,
             content: bytes = CONTENT, **options: Any) -> Conversation:
    conn = ClientConnection("client.example.com", **options)
    talk = Conversation(conn)
    todo = [spec] if spec is not None else []

    def react(events: list[ClientEvent]) -> None:
        for event in events:
            talk.events.append(event)
            if isinstance(event, Ready):
                react(conn.send_message(todo.pop()) if todo else conn.quit())
            elif isinstance(event, UpgradeTLS):
                react(conn.tls_established())
            elif isinstance(event, SendContent):
                for start in range(0, len(content), 7):  # pieces of any size are fine
                    conn.send_content(content[start:start + 7])
                react(conn.end_content())
            elif (isinstance(event, TransactionDone) and conn.state is ClientState.READY
                  or isinstance(event, SessionFailed) and event.can_quit):
                react(conn.quit())
        talk.sent += conn.data_to_send()

    for chunk in chunks:
        react(conn.receive_data(chunk))
    return talk


def splits(data: bytes) -> Iterator[list[bytes]]:
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


def replay(server: bytes, spec: Transaction | None = None, **options: Any) -> Conversation:
    """The conversation, after checking every split of `server` gives the same one."""
    reference = converse([server], spec, **options)
    for chunks in splits(server):
        other = converse(chunks, spec, **options)
        assert (other.sent, other.events) == (reference.sent, reference.events), chunks
    return reference


# --- replies ------------------------------------------------------------------------------


def parse_all(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


def test_multiline_replies_and_enhanced_codes_on_every_line() -> None:
    data = (b"550-5.1.1 The email account that you tried to reach does not exist.\r\n"
            b"550-5.1.1 Please try double-checking the recipient's address\r\n"
            b"550 5.1.1 for typos.\r\n354 End data with <CR><LF>.<CR><LF>\r\n250\r\n"
            b"250 5.0.0 class does not match: kept as text\r\n")
    expected = [
        Reply(550, "5.1.1", "The email account that you tried to reach does not exist.\n"
              "Please try double-checking the recipient's address\nfor typos."),
        Reply(354, "", "End data with <CR><LF>.<CR><LF>"),
        Reply(250, "", ""),
        Reply(250, "", "5.0.0 class does not match: kept as text"),
    ]
    assert parse_all(data) == expected
    for chunks in splits(data):
        parser = ReplyParser()
        got = []
        for chunk in chunks:
            parser.feed(chunk)
            while (reply := parser.next_reply()) is not None:
                got.append(reply)
        assert got == expected


def test_bare_lf_line_ends_are_tolerated_and_control_characters_removed() -> None:
    assert parse_all(b"250-first\n250 sec\x00ond\r\n") == [Reply(250, "", "first\nsec ond")]


@pytest.mark.parametrize("data", [
    b"hello\r\n", b"25\r\n", b"250-a\r\n251 b\r\n", b"199 informational\r\n",
    b"250x\r\n", b"".join(b"250-x\r\n" for _ in range(300)) + b"250 x\r\n",
])
def test_what_is_not_a_reply_is_refused(data: bytes) -> None:
    with pytest.raises(ReplyError):
        parse_all(data)


def test_extensions_and_size_limit() -> None:
    talk = replay(GREETING + POSTFIX_EHLO + b"221 2.0.0 Bye\r\n")
    ready = talk.events[0]
    assert isinstance(ready, Ready)
    assert set(ready.extensions) == {"PIPELINING", "SIZE", "VRFY", "ETRN", "ENHANCEDSTATUSCODES",
                                     "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"}
    assert talk.conn.max_size == 10240000 and talk.conn.accepts_8bit
    assert talk.commands() == [b"EHLO client.example.com", b"QUIT"]
    assert isinstance(talk.events[-1], Closed)
    unlimited = parse_extensions(Reply(250, "", "mx\nSIZE 0\nsize"))
    assert unlimited == {"SIZE": ""}  # later lines win; keywords are case-insensitive


# --- ESMTP transactions -------------------------------------------------------------------


def test_pipelined_transaction_sends_one_group_and_matches_replies_in_order() -> None:
    spec = Transaction("alice@example.com", ["bob@example.org", "nobody@example.org",
                                             "carol@example.org"], len(CONTENT))
    server = (GREETING + POSTFIX_EHLO
              + b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <nobody@example.org>: Recipient "
                b"address rejected: User unknown\r\n250 2.1.5 Ok\r\n354 End data with "
                b"<CR><LF>.<CR><LF>\r\n"
              + b"250 2.0.0 Ok: queued as 4XyZ1\r\n221 2.0.0 Bye\r\n")
    talk = replay(server, spec)
    assert talk.sent == (b"EHLO client.example.com\r\n"
                         b"MAIL FROM:<alice@example.com> SIZE=25\r\nRCPT TO:<bob@example.org>\r\n"
                         b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<carol@example.org>\r\n"
                         b"DATA\r\n" + CONTENT + b".\r\nQUIT\r\n")
    assert talk.outcomes == [("bob@example.org", 250, "2.0.0", Stage.END_OF_DATA),
                             ("nobody@example.org", 550, "5.1.1", Stage.RCPT),
                             ("carol@example.org", 250, "2.0.0", Stage.END_OF_DATA)]
    done = talk.events[2]
    assert isinstance(talk.events[1], SendContent) and isinstance(done, TransactionDone)
    assert [(o.delivered, o.permanent) for o in done.outcomes] == [(True, False), (False, True),
                                                                   (True, False)]


def test_pipelining_sends_the_whole_group_in_one_write() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING)
    conn.data_to_send()
    conn.receive_data(POSTFIX_EHLO)
    conn.send_message(Transaction("a@example.com", ["b@example.org", "c@example.org"], 10))
    assert conn.data_to_send() == (b"MAIL FROM:<a@example.com> SIZE=10\r\nRCPT TO:<b@example.org>"
                                   b"\r\nRCPT TO:<c@example.org>\r\nDATA\r\n")


def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING)
    conn.receive_data(PLAIN_EHLO)
    conn.data_to_send()
    conn.send_message(Transaction("a@example.com", ["b@example.org", "c@example.org"], 10))
    steps = [(b"", b"MAIL FROM:<a@example.com> SIZE=10\r\n"),
             (b"250 ok\r\n", b"RCPT TO:<b@example.org>\r\n"),
             (b"450 4.2.1 busy\r\n", b"RCPT TO:<c@example.org>\r\n"),
             (b"250 ok\r\n", b"DATA\r\n")]
    for reply, command in steps:
        assert conn.receive_data(reply) == []
        assert conn.data_to_send() == command
    assert conn.receive_data(b"354 go ahead\r\n") == [SendContent()]


def test_no_recipient_accepted_without_pipelining_means_no_data() -> None:
    server = GREETING + PLAIN_EHLO + b"250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n221 bye\r\n"
    talk = replay(server, Transaction("a@example.com", ["x@example.org"], 10))
    assert talk.commands()[-2:] == [b"RCPT TO:<x@example.org>", b"QUIT"]
    assert talk.outcomes == [("x@example.org", 550, "5.1.1", Stage.RCPT)]


def test_second_transaction_starts_with_rset_in_the_same_group() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + POSTFIX_EHLO)
    spec = Transaction("a@example.com", ["b@example.org"], 3)
    conn.send_message(spec)
    assert conn.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n") == [SendContent()]
    conn.send_content(b"hi\n")
    conn.end_content()
    assert isinstance(conn.receive_data(b"250 2.0.0 queued\r\n")[0], TransactionDone)
    conn.data_to_send()
    conn.send_message(spec)
    assert conn.data_to_send().startswith(b"RSET\r\nMAIL FROM:<a@example.com> SIZE=3\r\n")
    events = conn.receive_data(b"250 2.0.0 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert events == [SendContent()]


def test_mail_refused_under_pipelining_decides_every_recipient() -> None:
    server = (GREETING + POSTFIX_EHLO + b"553 5.7.1 <a@example.com>: Sender address rejected\r\n"
              b"503 5.5.1 Error: need MAIL command\r\n503 5.5.1 Error: need MAIL command\r\n"
              b"554 5.5.1 Error: no valid recipients\r\n221 Bye\r\n")
    talk = replay(server, Transaction("a@example.com", ["b@example.org", "c@example.org"], 10))
    assert talk.outcomes == [("b@example.org", 553, "5.7.1", Stage.MAIL),
                             ("c@example.org", 553, "5.7.1", Stage.MAIL)]


def test_354_with_nobody_accepted_is_answered_with_an_empty_message() -> None:
    """RFC 2920 3.1: some servers accept DATA even though every RCPT failed."""
    server = (GREETING + POSTFIX_EHLO + b"250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n"
              b"554 5.5.1 no valid recipients\r\n221 Bye\r\n")
    talk = replay(server, Transaction("a@example.com", ["x@example.org"], 10))
    assert talk.commands()[-3:] == [b"DATA", b".", b"QUIT"]
    assert talk.outcomes == [("x@example.org", 550, "5.1.1", Stage.RCPT)]


def test_data_refused_decides_the_accepted_recipients() -> None:
    server = (GREETING + POSTFIX_EHLO + b"250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n221 Bye\r\n")
    talk = replay(server, Transaction("a@example.com", ["b@example.org"], 10))
    assert talk.outcomes == [("b@example.org", 451, "4.3.0", Stage.DATA)]


def test_a_refused_rset_skips_the_replies_already_owed_before_quit() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + POSTFIX_EHLO)
    conn.send_message(Transaction("a@x.org", ["b@x.org"], 2))
    conn.receive_data(b"250 ok\r\n250 ok\r\n451 4.3.0 later\r\n")
    conn.data_to_send()
    conn.send_message(Transaction("a@x.org", ["b@x.org"], 2))
    assert conn.data_to_send().startswith(b"RSET\r\nMAIL")
    failed = conn.receive_data(b"502 5.5.1 no RSET here\r\n503 a\r\n")
    assert isinstance(failed[0], SessionFailed) and failed[0].stage is Stage.RSET
    assert conn.quit() == [] and conn.data_to_send() == b"QUIT\r\n"
    assert conn.receive_data(b"503 b\r\n554 c\r\n221 2.0.0 bye\r\n") == [Closed()]


def test_content_is_dot_stuffed_byte_exact() -> None:
    content = b".\r\n..two\r\n.x\r\nmid.dle\r\nbare\nlf\r\n.last"
    server = GREETING + POSTFIX_EHLO + b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n"
    talk = converse([server], Transaction("a@example.com", ["b@example.org"], 40), content)
    body = talk.sent.split(b"DATA\r\n", 1)[1].rsplit(b"QUIT\r\n", 1)[0]
    assert body == b"..\r\n...two\r\n..x\r\nmid.dle\r\nbare\r\nlf\r\n..last\r\n.\r\n"


def test_mail_parameters_follow_what_the_peer_offers() -> None:
    spec = Transaction("a@example.com", ["b@example.org"], 77, eight_bit=True,
                       mail_params={"RET": "HDRS", "ENVID": "QQ314159", "SMTPUTF8": None},
                       rcpt_params=[{"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;b@example.org"}])
    talk = converse([GREETING + POSTFIX_EHLO], spec)
    assert talk.commands()[1:3] == [
        b"MAIL FROM:<a@example.com> SIZE=77 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159",
        b"RCPT TO:<b@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@example.org"]
    no_dsn = GREETING + b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    talk = converse([no_dsn], spec)
    assert talk.commands()[1:3] == [b"MAIL FROM:<a@example.com> BODY=8BITMIME",
                                    b"RCPT TO:<b@example.org>"]


def test_an_8bit_body_for_a_peer_without_8bitmime_must_be_downgraded_first() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + PLAIN_EHLO)
    with pytest.raises(ValueError, match="downgrade"):
        conn.send_message(Transaction("a@example.com", ["b@example.org"], 10, eight_bit=True))


def test_message_over_the_size_limit_is_refused_without_sending() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + POSTFIX_EHLO)
    conn.data_to_send()
    events = conn.send_message(Transaction("a@example.com", ["b@x.org", "c@x.org"], 10240001))
    assert conn.data_to_send() == b""
    assert isinstance(events[0], TransactionDone)
    assert [(o.reply.code, o.reply.enhanced, o.permanent, o.remote) for o in events[0].outcomes] \
        == [(552, "5.3.4", True, False)] * 2
    assert "10240000" in events[0].outcomes[0].reply.text
    assert conn.state is ClientState.READY


def test_smtputf8_addresses_need_a_peer_that_offers_it() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + PLAIN_EHLO)
    conn.data_to_send()
    conn.send_message(Transaction("a@example.com", ["δοκιμή@παράδειγμα.δοκιμή", "b@x.org"], 5))
    assert conn.data_to_send() == b"MAIL FROM:<a@example.com> SIZE=5\r\n"
    conn.receive_data(b"250 ok\r\n250 ok\r\n")
    assert conn.receive_data(b"354 go\r\n") == [SendContent()]
    conn.send_content(b"hi\r\n")
    done = conn.end_content() + conn.receive_data(b"250 ok\r\n")
    assert isinstance(done[0], TransactionDone)
    first = done[0].outcomes[0]
    assert (first.reply.code, first.reply.enhanced, first.stage) == (553, "5.6.7", Stage.PRECHECK)

    conn.data_to_send()
    utf8_sender = Transaction("ñ@example.com", ["b@x.org"], 5)
    refused = conn.send_message(utf8_sender)
    assert isinstance(refused[0], TransactionDone) and conn.data_to_send() == b""
    assert refused[0].outcomes[0].reply.code == 553

    talk = converse([GREETING + POSTFIX_EHLO], utf8_sender)
    assert "MAIL FROM:<ñ@example.com> SIZE=5 SMTPUTF8".encode() in talk.commands()


def test_control_characters_in_addresses_never_reach_the_wire() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + POSTFIX_EHLO)
    conn.data_to_send()
    events = conn.send_message(Transaction("a@x.org", ["b@x.org>\r\nRCPT TO:<evil@x.org"], 5))
    assert isinstance(events[0], TransactionDone) and conn.data_to_send() == b""
    assert events[0].outcomes[0].reply.enhanced == "5.1.3"


# --- session set-up ---------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [b"502 5.5.2 Error: command not recognized\r\n",
                                     b"500 Syntax error, command unrecognized\r\n",
                                     b"554 EHLO not supported\r\n"])
def test_ehlo_refused_falls_back_to_helo(refusal: bytes) -> None:
    server = GREETING + refusal + b"250 old.example.org\r\n250 ok\r\n250 ok\r\n354 go\r\n" \
        b"250 ok\r\n221 bye\r\n"
    talk = replay(server, Transaction("a@example.com", ["b@example.org"], 25))
    assert talk.commands()[:4] == [b"EHLO client.example.com", b"HELO client.example.com",
                                   b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.org>"]
    assert talk.events[0] == Ready({}) and not talk.conn.esmtp
    assert talk.outcomes == [("b@example.org", 250, "", Stage.END_OF_DATA)]


def test_ehlo_and_helo_refused_fails_the_session() -> None:
    talk = replay(GREETING + b"502 no\r\n501 5.5.4 no HELO either\r\n221 bye\r\n")
    failed = talk.events[0]
    assert isinstance(failed, SessionFailed) and failed.stage is Stage.HELO and failed.can_quit
    assert talk.commands()[-1] == b"QUIT"


def test_temporary_ehlo_refusal_is_not_answered_with_helo() -> None:
    talk = replay(GREETING + b"451 4.3.0 try later\r\n221 bye\r\n")
    assert talk.commands() == [b"EHLO client.example.com", b"QUIT"]
    assert isinstance(talk.events[0], SessionFailed)


@pytest.mark.parametrize("greeting,quits", [(b"554 5.7.1 No SMTP service here\r\n", True),
                                            (b"450 4.3.2 busy\r\n", True),
                                            (b"421 4.3.2 Service not available\r\n", False)])
def test_greeting_refusal(greeting: bytes, quits: bool) -> None:
    talk = replay(greeting + b"221 bye\r\n")
    failed = talk.events[0]
    assert isinstance(failed, SessionFailed) and failed.stage is Stage.GREETING
    assert failed.reply is not None and failed.reply.code == int(greeting[:3])
    assert talk.commands() == ([b"QUIT"] if quits else [])


def test_starttls_discards_plaintext_and_says_ehlo_again() -> None:
    offered = b"250-mx.example.org\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SIZE 100\r\n"
    injected = b"250-evil\r\n250 SIZE 1\r\n"  # plaintext after the 220: must not count
    after = b"250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 5000\r\n221 bye\r\n"
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + offered)
    assert conn.data_to_send() == b"EHLO client.example.com\r\nSTARTTLS\r\n"
    assert conn.receive_data(b"220 2.0.0 Ready to start TLS\r\n" + injected) == [UpgradeTLS()]
    assert conn.receive_data(b"more plaintext") == []
    assert conn.tls_established() == []
    assert conn.data_to_send() == b"EHLO client.example.com\r\n"
    events = conn.receive_data(after)
    assert events == [Ready({"PIPELINING": "", "SIZE": "5000"})]
    assert conn.tls and conn.max_size == 5000


def test_starttls_refused_goes_on_in_plaintext_and_can_be_switched_off() -> None:
    offered = b"250-mx.example.org\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
    talk = replay(GREETING + offered + b"454 4.7.0 TLS not available\r\n221 bye\r\n")
    assert talk.commands() == [b"EHLO client.example.com", b"STARTTLS", b"QUIT"]
    assert isinstance(talk.events[0], Ready) and not talk.conn.tls
    talk = replay(GREETING + offered + b"221 bye\r\n", starttls=False)
    assert talk.commands() == [b"EHLO client.example.com", b"QUIT"]


# --- LMTP ---------------------------------------------------------------------------------


def test_lmtp_gives_one_reply_per_accepted_recipient_after_the_data() -> None:
    lhlo = b"250-lmtp.example.org\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n"
    server = (b"220 lmtp.example.org LMTP ready\r\n" + lhlo
              + b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n250 2.1.5 ok\r\n354 go\r\n"
                b"250 2.0.0 <b@example.org> saved\r\n452 4.2.2 <d@example.org> over quota\r\n"
                b"221 bye\r\n")
    spec = Transaction("a@example.com", ["b@example.org", "c@example.org", "d@example.org"], 25)
    talk = replay(server, spec, lmtp=True)
    assert talk.commands()[0] == b"LHLO client.example.com"
    assert talk.outcomes == [("b@example.org", 250, "2.0.0", Stage.END_OF_DATA),
                             ("c@example.org", 550, "5.1.1", Stage.RCPT),
                             ("d@example.org", 452, "4.2.2", Stage.END_OF_DATA)]


def test_lmtp_never_falls_back_to_helo() -> None:
    talk = replay(b"220 lmtp\r\n500 5.5.1 unknown command\r\n221 bye\r\n", lmtp=True)
    assert talk.commands() == [b"LHLO client.example.com", b"QUIT"]
    assert isinstance(talk.events[0], SessionFailed)


# --- failures in the middle ----------------------------------------------------------------


def test_421_in_a_transaction_keeps_what_was_decided() -> None:
    server = (GREETING + POSTFIX_EHLO + b"250 ok\r\n550 5.1.1 unknown\r\n"
              b"421 4.4.2 mx.example.org Error: timeout exceeded\r\n")
    talk = replay(server, Transaction("a@x.org", ["gone@x.org", "b@x.org", "c@x.org"], 5))
    failed = talk.events[-1]
    assert isinstance(failed, SessionFailed) and failed.stage is Stage.RCPT
    assert failed.reply is not None and failed.reply.code == 421 and not failed.can_quit
    assert [o and o.reply.code for o in failed.decided] == [550, None, None]
    assert not failed.data_sent and talk.commands()[-1] == b"DATA"  # no QUIT after a 421


def test_silence_after_the_end_of_data_leaves_the_message_in_doubt() -> None:
    talk = converse([GREETING + POSTFIX_EHLO + b"250 ok\r\n250 ok\r\n354 go\r\n"],
                    Transaction("a@x.org", ["b@x.org"], 5))
    assert talk.conn.awaiting is Stage.END_OF_DATA
    failed = talk.conn.connection_lost()
    assert isinstance(failed[0], SessionFailed) and failed[0].data_sent
    assert failed[0].decided == (None,)
    talk = converse([GREETING + POSTFIX_EHLO + b"250 ok\r\n250 ok\r\n354 go\r\n421 4.3.0 bye\r\n"],
                    Transaction("a@x.org", ["b@x.org"], 5))
    assert isinstance(talk.events[-1], SessionFailed) and not talk.events[-1].data_sent


def test_unrequested_replies_and_timeouts_end_the_session() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + POSTFIX_EHLO)
    events = conn.send_message(Transaction("a@x.org", ["b@x.org"], 5))
    assert events == [] and conn.awaiting is Stage.MAIL
    failed = conn.abort("timed out")
    assert isinstance(failed[0], SessionFailed) and failed[0].stage is Stage.MAIL
    assert conn.state is ClientState.CLOSED and conn.abort("again") == []

    idle = ClientConnection("client.example.com")
    idle.receive_data(GREETING + POSTFIX_EHLO)
    idle.quit()
    talk = idle.receive_data(b"221 bye\r\n250 extra\r\n")
    assert talk == [Closed()]


def test_input_held_while_the_application_owes_an_answer_is_bounded() -> None:
    conn = ClientConnection("client.example.com")
    conn.receive_data(GREETING + POSTFIX_EHLO)  # Ready: held until send_message or quit
    assert conn.receive_data(b"250-x\r\n" * 1000) == []
    failed = conn.receive_data(b"x" * (1 << 20))
    assert isinstance(failed[0], SessionFailed) and "nobody asked for" in failed[0].reason


def test_the_transcript_shows_the_dialogue_in_order() -> None:
    lines: list[str] = []
    conn = ClientConnection("client.example.com",
                            transcript=lambda way, line: lines.append(f"{way} {line}"))
    conn.receive_data(GREETING + b"250-mx\r\n250 PIPELINING\r\n")
    conn.send_message(Transaction("a@x.org", ["b@x.org"], 5))
    conn.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    conn.send_content(b"hi\r\n")
    conn.end_content()
    conn.receive_data(b"250 2.0.0 queued\r\n")
    assert lines == ["<<< 220 mx.example.org ESMTP Postfix (Debian/GNU)",
                     ">>> EHLO client.example.com", "<<< 250-mx", "<<< 250 PIPELINING",
                     ">>> MAIL FROM:<a@x.org>", ">>> RCPT TO:<b@x.org>", ">>> DATA",
                     "<<< 250 ok", "<<< 250 ok", "<<< 354 go", ">>> .",
                     "<<< 250 2.0.0 queued"]
    assert Direction.SENT == ">>>"


def test_calls_out_of_order_are_programming_errors() -> None:
    conn = ClientConnection("client.example.com")
    with pytest.raises(RuntimeError, match="wait for the matching event"):
        conn.send_message(Transaction("a@x.org", ["b@x.org"], 5))
    with pytest.raises(ValueError, match="EHLO name"):
        ClientConnection("bad name\r\n")
