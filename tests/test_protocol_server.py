"""Recorded SMTP sessions replayed against the sans-IO server, whole and split at every byte.

`Driver` plays the transport: it feeds packets, stores message content the way
the spool would, answers MessageComplete with accept_message and StartTLS with
tls_established, and keeps every byte the server wrote.  A session is a list of
packets; the client waits for replies between packets, as a real one does.
Each test runs once per kernel backend (compiled and pure Python).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from fastmta.policy import RecipientPolicy
from fastmta.protocol import (
    Close,
    DataChunk,
    DataStart,
    Event,
    Helo,
    MailFrom,
    MessageAborted,
    MessageComplete,
    PeerInfo,
    RcptTo,
    Reply,
    ServerConnection,
    ServerSettings,
    StartTLS,
    State,
)

SETTINGS = ServerSettings(hostname="mx.example.com", max_message_size=4096, tls_available=True)
CLIENT = PeerInfo("192.0.2.10", 40000, "client.example.net")
_REPLY_LINE = re.compile(rb"(\d{3})([ -])(.*)")
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@pytest.fixture(autouse=True)
def kernel_backend(backend, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Every recorded session runs on the compiled kernels and on their pure-Python twins."""
    from fastmta.protocol import server

    for name in ("LineSplitter", "DataReader", "LINE_TOO_LONG", "LINE_NUL", "LINE_BARE_CR"):
        monkeypatch.setattr(server, name, getattr(backend, name))
    return backend


def make_policy(**overrides: object) -> RecipientPolicy:
    values: dict[str, object] = {"local_domains": ["example.com"], "relay_domains": ["relay.example"],
                                 "relay_networks": ["10.0.0.0/8"], "local_users": ["alice", "bob"]}
    values.update(overrides)
    return RecipientPolicy(**values)  # type: ignore[arg-type]


class Driver:
    """A minimal transport: bytes in, events handled, replies collected."""

    def __init__(self, settings: ServerSettings = SETTINGS, policy: RecipientPolicy | None = None,
                 peer: PeerInfo = CLIENT, reject_with: Reply | None = None) -> None:
        self.conn = ServerConnection(settings, policy or make_policy(), peer)
        self.wire = bytearray()
        self.events: list[Event] = []
        self.messages: list[bytes] = []
        self.aborted: list[Reply] = []
        self.closed = False
        self.reject_with = reject_with
        self._content: bytearray | None = None
        self.conn.greeting()
        self._flush()

    def feed(self, data: bytes) -> None:
        self._handle(self.conn.receive_data(data))

    def play(self, packets: Sequence[bytes]) -> Driver:
        for packet in packets:
            self.feed(packet)
        return self

    def _flush(self) -> None:
        self.wire += self.conn.data_to_send()

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, DataStart):
                assert self._content is None, "DataStart while a message is open"
                self._content = bytearray()
            elif isinstance(event, DataChunk):
                assert self._content is not None and event.data
                self._content += event.data
            elif isinstance(event, MessageComplete):
                assert self._content is not None and len(self._content) == event.size
                content, self._content = bytes(self._content), None
                if self.reject_with is not None:
                    self._handle(self.conn.reject_message(self.reject_with))
                else:
                    self.messages.append(content)
                    self._handle(self.conn.accept_message(f"Q{len(self.messages)}"))
            elif isinstance(event, MessageAborted):
                assert self._content is not None
                self._content = None
                self.aborted.append(event.reply)
            elif isinstance(event, StartTLS):
                self._flush()  # the 220 goes out in plaintext before the handshake
                self._handle(self.conn.tls_established())
            elif isinstance(event, Close):
                self.closed = True
        self._flush()

    def replies(self) -> list[list[bytes]]:
        """The replies sent, each as its list of lines."""
        assert self.wire.endswith(b"\r\n") or not self.wire
        result: list[list[bytes]] = []
        current: list[bytes] = []
        for line in bytes(self.wire).split(b"\r\n")[:-1]:
            match = _REPLY_LINE.fullmatch(line)
            assert match, f"malformed reply line {line!r}"
            current.append(line)
            if match.group(2) == b" ":
                result.append(current)
                current = []
        assert not current, "unterminated multiline reply"
        return result

    def codes(self) -> list[str]:
        """"250 2.1.0"-style code (and enhanced code, when there is one) of each reply."""
        out = []
        for reply in self.replies():
            words = reply[-1].decode().split(" ")
            has_enhanced = len(words) > 1 and _ENHANCED.fullmatch(words[1])
            out.append(f"{words[0]} {words[1]}" if has_enhanced else words[0])
        return out

    def event_kinds(self) -> list[str]:
        return [type(event).__name__ for event in self.events if not isinstance(event, DataChunk)]


def assert_enhanced_codes_everywhere(driver: Driver) -> None:
    """RFC 2034 4: every 2xx/4xx/5xx line carries an enhanced code, except the
    greeting and the HELO/EHLO answers."""
    for reply in driver.replies()[1:]:
        code = reply[0][:3]
        if code[:1] == b"3" or (code == b"250" and not _ENHANCED.match(reply[0][4:].decode())
                                and reply[0][4:].startswith(b"mx.example.com")):
            continue
        for line in reply:
            assert _ENHANCED.match(line[4:].decode()), f"no enhanced code in {line!r}"


def replay_split(packets: Sequence[bytes], **driver_args: object) -> Driver:
    """Play the session whole, then with each packet split at every byte; all must agree."""
    whole = Driver(**driver_args).play(packets)  # type: ignore[arg-type]
    for index, packet in enumerate(packets):
        for cut in range(1, len(packet)):
            split = list(packets[:index]) + [packet[:cut], packet[cut:]] + list(packets[index + 1:])
            other = Driver(**driver_args).play(split)  # type: ignore[arg-type]
            assert other.wire == whole.wire, f"replies differ when packet {index} is cut at {cut}"
            assert other.messages == whole.messages
            assert other.event_kinds() == whole.event_kinds()
    bytewise = Driver(**driver_args)  # type: ignore[arg-type]
    for packet in packets:
        for offset in range(len(packet)):
            bytewise.feed(packet[offset:offset + 1])
    assert bytewise.wire == whole.wire and bytewise.messages == whole.messages
    return whole


BODY = (b"From: Alice <alice@example.net>\r\nSubject: test\r\n\r\n"
        b"Hello.\r\n..a line that starts with a dot\r\n.\r\n")
BODY_CONTENT = (b"From: Alice <alice@example.net>\r\nSubject: test\r\n\r\n"
                b"Hello.\r\n.a line that starts with a dot\r\n")


def test_helo_only_client_one_command_per_packet() -> None:
    driver = replay_split([
        b"HELO client.example.net\r\n",
        b"MAIL FROM:<sender@example.net>\r\n",
        b"RCPT TO:<alice@example.com>\r\n",
        b"DATA\r\n",
        BODY,
        b"QUIT\r\n",
    ])
    assert driver.codes() == ["220", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0",
                              "221 2.0.0"]
    assert driver.replies()[0] == [b"220 mx.example.com ESMTP ready"]
    assert driver.replies()[1] == [b"250 mx.example.com"]
    assert driver.replies()[5] == [b"250 2.0.0 Ok: queued as Q1"]
    assert driver.messages == [BODY_CONTENT]
    assert driver.closed and driver.conn.closed
    start = next(e for e in driver.events if isinstance(e, DataStart))
    assert start.transaction.sender == "sender@example.net"
    assert [r.address for r in start.transaction.recipients] == ["alice@example.com"]
    assert start.transaction.helo == "client.example.net"
    assert start.transaction.protocol_name == "SMTP"
    assert_enhanced_codes_everywhere(driver)


def test_ehlo_client_pipelines_envelope_and_quit() -> None:
    driver = replay_split([
        b"EHLO client.example.net\r\n",
        (b"MAIL FROM:<sender@example.net> SIZE=120 BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.com\r\n"
        b"RCPT TO:<bob@example.com>\r\nDATA\r\n"),
        BODY + b"QUIT\r\n",
    ])
    ehlo = driver.replies()[1]
    assert ehlo == [b"250-mx.example.com", b"250-SIZE 4096", b"250-8BITMIME", b"250-PIPELINING",
                    b"250-ENHANCEDSTATUSCODES", b"250-SMTPUTF8", b"250-CHUNKING",
                    b"250-BINARYMIME", b"250-DSN", b"250-STARTTLS", b"250 HELP"]
    assert driver.codes()[2:] == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0",
                                  "221 2.0.0"]
    assert driver.event_kinds() == ["Helo", "MailFrom", "RcptTo", "RcptTo", "DataStart",
                                    "MessageComplete", "Close"]
    mail = next(e for e in driver.events if isinstance(e, MailFrom))
    assert mail.params == {"SIZE": "120", "BODY": "8BITMIME"}
    rcpt = next(e for e in driver.events if isinstance(e, RcptTo))
    assert rcpt.params == {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;alice@example.com"}
    assert driver.messages == [BODY_CONTENT]
    assert_enhanced_codes_everywhere(driver)


def test_session_commands_and_two_transactions() -> None:
    driver = replay_split([
        b"NOOP\r\n", b"HELP\r\n", b"VRFY alice\r\n", b"EXPN staff\r\n",
        b"EHLO client.example.net\r\n",
        b"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nRSET\r\n",
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<Bob@Example.COM>\r\nDATA\r\n",
        b"x\r\n.\r\n",
        b"mail from:<b@example.net>\r\nrcpt to:<alice@example.com>\r\ndata\r\n",
        b".\r\n",
        b"TURN\r\n", b"quit\r\n",
    ])
    assert driver.codes() == ["220", "250 2.0.0", "214 2.0.0", "252 2.0.0", "502 5.5.1", "250",
                              "250 2.1.0", "250 2.1.5", "250 2.0.0",
                              "250 2.1.0", "250 2.1.5", "354", "250 2.0.0",
                              "250 2.1.0", "250 2.1.5", "354", "250 2.0.0",
                              "502 5.5.1", "221 2.0.0"]
    assert driver.messages == [b"x\r\n", b""]
    assert len(driver.replies()[2]) == 2  # HELP is a multiline 214
    assert_enhanced_codes_everywhere(driver)


def test_bdat_chunks_and_last() -> None:
    driver = replay_split([
        b"EHLO client.example.net\r\n",
        (b"MAIL FROM:<a@example.net> BODY=BINARYMIME\r\nRCPT TO:<alice@example.com>\r\n"
        b"BDAT 12\r\nSubject: x\r\n"),
        b"BDAT 9 LAST\r\n\r\n\x00\xff\n\rbin",
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.com>\r\nBDAT 0 LAST\r\nQUIT\r\n",
    ])
    assert driver.codes()[2:] == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0",
                                  "250 2.1.0", "250 2.1.5", "250 2.0.0", "221 2.0.0"]
    assert driver.replies()[4] == [b"250 2.0.0 Ok: 12 octets received"]
    assert driver.replies()[5] == [b"250 2.0.0 Ok: queued as Q1"]
    assert driver.messages == [b"Subject: x\r\n\r\n\x00\xff\n\rbin", b""]
    assert_enhanced_codes_everywhere(driver)


def test_starttls_resets_the_session() -> None:
    driver = replay_split([
        b"EHLO client.example.net\r\n",
        b"STARTTLS\r\n",
        b"MAIL FROM:<a@example.net>\r\n",  # after the handshake: EHLO is needed again
        b"EHLO client.example.net\r\n",
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n",
        b"hi\r\n.\r\n",
        b"STARTTLS\r\n",
    ])
    assert driver.codes() == ["220", "250", "220 2.0.0", "503 5.5.1", "250", "250 2.1.0",
                              "250 2.1.5", "354", "250 2.0.0", "554 5.5.1"]
    assert b"250-STARTTLS" in driver.replies()[1]
    assert b"250-STARTTLS" not in driver.replies()[4]  # not offered inside TLS
    start = next(e for e in driver.events if isinstance(e, DataStart))
    assert start.transaction.tls and start.transaction.protocol_name == "ESMTPS"
    assert driver.conn.session.tls
    assert_enhanced_codes_everywhere(driver)


def test_many_messages_pipelined_in_one_packet() -> None:
    one = (b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
           b"m\r\n.\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<bob@example.com>\r\nBDAT 3 LAST\r\nb\r\n")
    driver = Driver().play([b"EHLO c.example\r\n", one * 300 + b"QUIT\r\n"])
    assert driver.messages == [b"m\r\n", b"b\r\n"] * 300
    assert driver.codes()[-1] == "221 2.0.0"
    assert driver.codes().count("250 2.0.0") == 600


def test_input_is_held_until_the_message_is_answered() -> None:
    conn = ServerConnection(SETTINGS, make_policy(), CLIENT)
    conn.greeting()
    conn.receive_data(b"EHLO c.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.com>\r\n")
    events = conn.receive_data(b"DATA\r\nhello\r\n.\r\nRSET\r\n")
    assert isinstance(events[-1], MessageComplete) and conn.state is State.WAIT_MESSAGE
    assert conn.receive_data(b"NOOP\r\n") == []
    assert conn.input_buffered == len(b"RSET\r\nNOOP\r\n")
    conn.data_to_send()
    assert conn.accept_message("ABC123") == []
    assert conn.data_to_send() == (b"250 2.0.0 Ok: queued as ABC123\r\n250 2.0.0 Ok: reset\r\n"
                                   b"250 2.0.0 Ok\r\n")
    assert conn.input_buffered == 0
    with pytest.raises(RuntimeError):
        conn.accept_message("again")


def test_spool_failure_is_reported_and_the_session_goes_on() -> None:
    from fastmta.protocol.replies import SPOOL_FAILURE

    driver = Driver(reject_with=SPOOL_FAILURE).play([
        b"EHLO c.example\r\n",
        b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n",
        b"x\r\n.\r\nMAIL FROM:<a@example.net>\r\n",
    ])
    assert driver.codes()[-2:] == ["452 4.3.1", "250 2.1.0"]
    assert driver.conn.transaction is not None and driver.conn.transaction.sender == "a@example.net"


def test_events_carry_the_envelope() -> None:
    driver = Driver().play([b"EHLO  c.example \r\n",
                            (b"MAIL FROM: <J\xc3\xb6rg@example.net> SMTPUTF8\r\n"
                            b"RCPT TO:<alice@example.com>\r\n")])
    assert driver.events[0] == Helo("c.example", True)
    assert driver.events[1] == MailFrom("Jörg@example.net", {"SMTPUTF8": None})
    transaction = driver.conn.transaction
    assert transaction is not None and transaction.smtputf8
    assert transaction.protocol_name == "UTF8SMTP"
