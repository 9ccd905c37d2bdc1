"""Every limit and defence of the sans-IO server, asserted by reply code and enhanced code."""

from __future__ import annotations

import dataclasses

from test_protocol_server import CLIENT, SETTINGS, Driver, make_policy

from fastmta.protocol import (
    Close,
    CloseReason,
    DataChunk,
    MailFrom,
    PeerInfo,
    ServerConnection,
    ServerSettings,
    State,
)

EHLO = b"EHLO client.example.net\r\n"
ENVELOPE = b"MAIL FROM:<a@example.net>\r\nRCPT TO:<alice@example.com>\r\n"


def codes_after_ehlo(*packets: bytes, **driver_args: object) -> list[str]:
    driver = Driver(**driver_args).play([EHLO, *packets])  # type: ignore[arg-type]
    return driver.codes()[2:]


def settings(**changes: object) -> ServerSettings:
    return dataclasses.replace(SETTINGS, **changes)  # type: ignore[arg-type]


# --- command order (state.py) -------------------------------------------------------

def test_command_order_is_enforced() -> None:
    driver = Driver().play([b"MAIL FROM:<a@example.net>\r\n", b"RCPT TO:<alice@example.com>\r\n",
                            b"DATA\r\n", b"BDAT 3\r\nabc", EHLO])
    assert driver.codes()[1:] == ["503 5.5.1", "503 5.5.1", "503 5.5.1", "503 5.5.1", "250"]
    assert codes_after_ehlo(b"RCPT TO:<alice@example.com>\r\n", b"DATA\r\n") == \
        ["503 5.5.1", "503 5.5.1"]
    assert codes_after_ehlo(b"MAIL FROM:<a@example.net>\r\n", b"MAIL FROM:<a@example.net>\r\n",
                            b"DATA\r\n") == ["250 2.1.0", "503 5.5.1", "554 5.5.1"]
    assert codes_after_ehlo(ENVELOPE + b"STARTTLS\r\n") == ["250 2.1.0", "250 2.1.5", "503 5.5.1"]


def test_unknown_obsolete_and_malformed_commands() -> None:
    assert codes_after_ehlo(b"FOO\r\n", b"TURN\r\n", b"SEND FROM:<a@b>\r\n", b"SOML\r\n",
                            b"SAML\r\n") == ["500 5.5.2", "502 5.5.1", "502 5.5.1", "502 5.5.1",
                                             "502 5.5.1"]
    assert codes_after_ehlo(b"HELO\r\n", b"MAIL <a@example.net>\r\n", b"MAIL FROM:a b c\r\n",
                            b"MAIL FROM:<a@example.net> FOO=1\r\n",
                            b"MAIL FROM:<a@example.net> SIZE=x\r\n", b"RSET now\r\n") == \
        ["501 5.5.4", "501 5.5.4", "501 5.1.7", "555 5.5.4", "501 5.5.4", "501 5.5.4"]
    assert codes_after_ehlo(b"MAIL FROM:<a@example.net>\r\n", b"RCPT TO:<bad address>\r\n",
                            b"RCPT <alice@example.com>\r\n", b"RCPT TO:<a@example.com> X=1\r\n") \
        == ["250 2.1.0", "501 5.1.3", "501 5.5.4", "555 5.5.4"]


def test_non_ascii_address_needs_smtputf8() -> None:
    sender = "jörg@example.net".encode()
    assert codes_after_ehlo(b"MAIL FROM:<" + sender + b">\r\n",
                            b"MAIL FROM:<" + sender + b"> SMTPUTF8\r\n",
                            b"RCPT TO:<" + "alice@exämple.com".encode() + b">\r\n") == \
        ["553 5.6.7", "250 2.1.0", "554 5.7.1"]  # accepted syntax; not our domain
    assert codes_after_ehlo(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<" + "ålice@example.com".encode()
                            + b">\r\n") == ["250 2.1.0", "553 5.6.7"]
    assert codes_after_ehlo(b"MAIL FROM:<\xff@example.net>\r\n") == ["501 5.1.7"]


# --- sizes and counts ---------------------------------------------------------------

def test_size_parameter_over_the_limit() -> None:
    driver = Driver().play([EHLO, b"MAIL FROM:<a@example.net> SIZE=4097\r\n",
                            b"MAIL FROM:<a@example.net> SIZE=4096\r\n"])
    assert driver.codes()[2:] == ["552 5.3.4", "250 2.1.0"]
    assert driver.replies()[2] == [(b"552 5.3.4 Message size exceeds the fixed maximum message "
                                   b"size of 4096 bytes")]


def test_oversized_data_is_drained_then_refused_and_the_session_goes_on() -> None:
    body = b"".join(b"line %05d with some padding to make it longer\r\n" % i for i in range(200))
    smuggled = b"MAIL FROM:<evil@example.net>\r\n"  # content, never a command
    driver = Driver().play([EHLO, ENVELOPE + b"DATA\r\n", body[:5000], smuggled + body[5000:],
                            b".\r\n" + ENVELOPE])
    assert driver.codes()[2:] == ["250 2.1.0", "250 2.1.5", "354", "552 5.3.4", "250 2.1.0",
                                  "250 2.1.5"]
    assert driver.aborted and driver.aborted[0].code == 552 and not driver.messages
    delivered = sum(len(e.data) for e in driver.events if isinstance(e, DataChunk))
    assert delivered <= 4096  # nothing past the limit was handed to the spool
    assert [e.address for e in driver.events if isinstance(e, MailFrom)] == ["a@example.net"] * 2


def test_bdat_over_the_limit_is_drained_then_refused() -> None:
    driver = Driver().play([EHLO, ENVELOPE + b"BDAT 4000\r\n" + b"x" * 4000,
                            b"BDAT 200 LAST\r\n" + b"RCPT TO:<x@example.com>\r\n" * 8,
                            b"NOOP\r\n"])
    assert driver.codes()[2:] == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "552 5.3.4", "250 2.0.0"]
    assert len(driver.aborted) == 1 and not driver.messages
    assert driver.conn.state is State.READY


def test_too_many_recipients() -> None:
    rcpts = b"".join(b"RCPT TO:<alice@example.com>\r\n" for _ in range(3))
    codes = codes_after_ehlo(b"MAIL FROM:<a@example.net>\r\n" + rcpts, settings=settings(max_recipients=2))
    assert codes == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3"]


def test_more_than_max_received_headers_is_a_loop() -> None:
    def message(hops: int) -> bytes:
        return b"Received: from a by b; date\r\n" * hops + b"Subject: x\r\n\r\nReceived: body\r\n.\r\n"

    codes = codes_after_ehlo(ENVELOPE + b"DATA\r\n", message(50), ENVELOPE + b"DATA\r\n",
                             message(51))
    assert codes == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "250 2.1.0", "250 2.1.5", "354",
                     "554 5.4.6"]
    # the same through BDAT, with lower-case field names split across chunks
    headers = b"received: x\r\n" * 51 + b"\r\nbody\r\n"
    codes = codes_after_ehlo(ENVELOPE + b"BDAT 100\r\n" + headers[:100],
                             b"BDAT %d LAST\r\n" % (len(headers) - 100) + headers[100:])
    assert codes == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "554 5.4.6"]


# --- line discipline ----------------------------------------------------------------

def test_overlong_command_line_is_refused_and_the_session_goes_on() -> None:
    driver = Driver().play([EHLO, b"NOOP " + b"x" * 600 + b"\r\n", b"X" * 5000 + b"\r\nNOOP\r\n"])
    assert driver.codes()[2:] == ["500 5.5.2", "500 5.5.2", "250 2.0.0"]
    # RFC 3461 lets MAIL/RCPT lines carry long ORCPT/ENVID parameters past 512 octets
    orcpt = b"rfc822;" + b"a" * 400 + b"@example.com"
    assert codes_after_ehlo(b"MAIL FROM:<a@example.net> ENVID=" + b"e" * 100 + b"\r\n",
                            b"RCPT TO:<alice@example.com> ORCPT=" + orcpt + b"\r\n") == \
        ["250 2.1.0", "250 2.1.5"]


def padded(prefix: bytes, suffix: bytes, total: int) -> bytes:
    """prefix, spaces, suffix and CRLF: a line of exactly `total` octets."""
    line = prefix + b" " * (total - len(prefix) - len(suffix) - 2) + suffix + b"\r\n"
    assert len(line) == total
    return line


def test_mail_and_rcpt_line_limits_follow_the_advertised_extensions() -> None:
    # RFC 5321 4.5.3.1.4: 512; MAIL + SIZE 26, BODY 16, SMTPUTF8 10, DSN 100 = 664; RCPT + DSN 500
    mail = b"MAIL FROM:<a@example.net>"
    assert codes_after_ehlo(padded(mail, b"SIZE=100", 664), padded(mail, b"SIZE=100", 665)) == \
        ["250 2.1.0", "500 5.5.2"]
    garbage = b"MAIL FROM:<a@b.c> " + b"X" * 698 + b"\r\n"  # 718 octets: never parsed
    assert len(garbage) == 718 and codes_after_ehlo(garbage) == ["500 5.5.2"]
    orcpt = b"ORCPT=rfc822;" + b"b" * 480 + b"@example.com"
    rcpt = b"RCPT TO:<alice@example.com>"
    assert codes_after_ehlo(b"MAIL FROM:<a@example.net>\r\n", padded(rcpt, orcpt, 1012),
                            padded(rcpt, orcpt, 1013), padded(rcpt, b"NOTIFY=NEVER", 5000)) == \
        ["250 2.1.0", "250 2.1.5", "500 5.5.2", "500 5.5.2"]
    assert codes_after_ehlo(padded(b"NOOP", b"x", 512), padded(b"NOOP", b"x", 513),
                            padded(b"VRFY", b"alice", 600)) == ["250 2.0.0", "500 5.5.2", "500 5.5.2"]
    # without DSN advertised, its allowances go too: MAIL 564, RCPT 512
    no_dsn = settings(dsn_enabled=False)
    assert codes_after_ehlo(padded(mail, b"SIZE=100", 564), padded(mail, b"SIZE=100", 565),
                            padded(rcpt, b"", 512), padded(rcpt, b"", 513), settings=no_dsn) == \
        ["250 2.1.0", "500 5.5.2", "250 2.1.5", "500 5.5.2"]


def test_junk_commands_past_the_limit_count_as_errors() -> None:
    # 100 free; then each of NOOP RSET HELP VRFY EXPN is an error too, its reply unchanged
    driver = Driver(settings=settings(max_junk_commands=100, max_errors=20))
    driver.play([EHLO, b"NOOP\r\n" * 100, b"RSET\r\nHELP\r\nVRFY a\r\n" + b"NOOP\r\n" * 10])
    assert driver.codes()[2:] == ["250 2.0.0"] * 100 + ["250 2.0.0", "214 2.0.0", "252 2.0.0"] + \
        ["250 2.0.0"] * 10
    assert not driver.closed
    driver.feed(b"EXPN staff\r\n" + b"NOOP\r\n" * 7)  # EXPN's 502: one error, not two
    assert driver.codes()[-8:] == ["502 5.5.1"] + ["250 2.0.0"] * 6 + ["421 4.7.0"]
    assert driver.closed and driver.conn.closed
    assert isinstance(driver.events[-1], Close) and \
        driver.events[-1].reason is CloseReason.TOO_MANY_ERRORS


def test_junk_allowance_is_renewed_by_an_accepted_message() -> None:
    message = ENVELOPE + b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
    driver = Driver(settings=settings(max_junk_commands=3, max_errors=2))
    driver.play([EHLO, b"NOOP\r\n" * 3, message, b"RSET\r\n" * 3, message, b"NOOP\r\n" * 4])
    assert driver.codes()[-5:] == ["250 2.0.0"] * 5 and not driver.closed
    assert len(driver.messages) == 2
    driver.feed(b"NOOP\r\n")  # the 5th since the last message: the second error
    assert driver.codes()[-2:] == ["250 2.0.0", "421 4.7.0"] and driver.closed


def test_bare_line_ends_and_nul_in_commands() -> None:
    assert codes_after_ehlo(b"NOOP\n", b"NOOP\rNOOP\r\n", b"NO\x00OP\r\n", b"NOOP\r\n") == \
        ["500 5.5.2", "500 5.5.2", "500 5.5.2", "250 2.0.0"]
    normalising = settings(bare_line_endings="normalise")
    assert codes_after_ehlo(b"NOOP\n", b"NOOP\rNOOP\r\n", settings=normalising) == \
        ["250 2.0.0", "500 5.5.2"]


def test_smuggling_with_bare_line_ends_in_data_is_refused() -> None:
    # An SMTP smuggling attempt: "\n.\r\n" and "\r\n.\n" do not end the data here,
    # so the message goes on to the real end; it is refused as a whole.
    smuggle = (b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<bob@example.com>\r\n"
               b"DATA\r\nforged\r\n.\n\r\n.\r\n")
    driver = Driver().play([EHLO, ENVELOPE + b"DATA\r\n", smuggle, b"NOOP\r\n"])
    assert driver.codes()[2:] == ["250 2.1.0", "250 2.1.5", "354", "554 5.6.0", "250 2.0.0"]
    assert not driver.messages and len(driver.aborted) == 1
    assert [e.address for e in driver.events if isinstance(e, MailFrom)] == ["a@example.net"]
    normal = Driver(settings=settings(bare_line_endings="normalise"))
    normal.play([EHLO, ENVELOPE + b"DATA\r\n", b"a\nb\rc\r\n.\r\n"])
    assert normal.messages == [b"a\r\nb\r\nc\r\n"]


def test_bare_line_ends_in_bdat() -> None:
    assert codes_after_ehlo(ENVELOPE + b"BDAT 2\r\na\r", b"BDAT 3 LAST\r\n\nb\n") == \
        ["250 2.1.0", "250 2.1.5", "250 2.0.0", "554 5.6.0"]
    # CR at the end of one chunk and LF at the start of the next form a proper CRLF
    driver = Driver().play([EHLO, ENVELOPE + b"BDAT 2\r\na\r", b"BDAT 3 LAST\r\n\nb\r"])
    assert driver.codes()[-2:] == ["250 2.0.0", "554 5.6.0"]  # the message ends in a lone CR
    driver = Driver().play([EHLO, ENVELOPE + b"BDAT 2\r\na\r", b"BDAT 4 LAST\r\n\nb\r\n"])
    assert driver.messages == [b"a\r\nb\r\n"]
    normal = Driver(settings=settings(bare_line_endings="normalise"))
    normal.play([EHLO, ENVELOPE + b"BDAT 2\r\na\r", b"BDAT 4 LAST\r\n\nb\rc"])
    assert normal.messages == [b"a\r\nb\r\nc"]


# --- errors, timeouts, early talk ---------------------------------------------------

def test_twenty_errors_close_the_session() -> None:
    driver = Driver().play([EHLO, b"BAD\r\n" * 19, b"NOOP\r\n", b"BAD\r\nNOOP\r\n"])
    codes = driver.codes()
    assert codes[2:21] == ["500 5.5.2"] * 19 and codes[21] == "250 2.0.0"
    assert codes[22:] == ["500 5.5.2", "421 4.7.0"]
    assert driver.closed and driver.conn.closed
    assert driver.replies()[-1] == [b"421 4.7.0 mx.example.com Too many errors; closing connection"]
    driver.feed(b"NOOP\r\n")
    assert driver.codes()[-1] == "421 4.7.0"  # nothing more is processed


def test_the_last_error_can_be_a_refused_message() -> None:
    driver = Driver().play([EHLO, b"BAD\r\n" * 19, ENVELOPE + b"DATA\r\n",
                            b"x" * 5000 + b"\r\n.\r\nNOOP\r\n"])
    assert driver.codes()[-2:] == ["552 5.3.4", "421 4.7.0"]
    assert driver.closed and driver.conn.input_buffered == 0
    assert [type(e).__name__ for e in driver.events[-2:]] == ["MessageAborted", "Close"]


def test_idle_timeout_mid_data_aborts_the_message() -> None:
    driver = Driver().play([EHLO, ENVELOPE + b"DATA\r\n", b"partial\r\n"])
    driver._handle(driver.conn.timeout())
    assert driver.codes()[-1] == "421 4.4.2" and driver.closed
    assert driver.aborted[0].code == 421 and not driver.messages
    assert isinstance(driver.events[-1], Close) and driver.events[-1].reason is CloseReason.TIMEOUT


def test_talking_before_the_greeting() -> None:
    conn = ServerConnection(SETTINGS, make_policy(), CLIENT)
    events = conn.receive_data(b"EHLO eager.example\r\n")
    assert events == [Close(CloseReason.EARLY_TALK)]
    assert conn.data_to_send().startswith(b"554 5.5.1 mx.example.com ")
    assert conn.receive_data(b"QUIT\r\n") == [] and conn.data_to_send() == b""


# --- STARTTLS (RFC 3207, CVE-2011-0411) ----------------------------------------------

def test_plaintext_pipelined_after_starttls_is_never_executed() -> None:
    conn = ServerConnection(SETTINGS, make_policy(), CLIENT)
    conn.greeting()
    conn.receive_data(EHLO)
    conn.data_to_send()
    events = conn.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\n")
    assert [type(e).__name__ for e in events] == ["StartTLS"]
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.receive_data(b"RCPT TO:<bob@example.com>\r\n") == []  # still plaintext: dropped
    assert conn.tls_established() == []
    events = conn.receive_data(b"RCPT TO:<bob@example.com>\r\n")
    assert events == [] and conn.data_to_send().startswith(b"503 5.5.1")
    assert conn.transaction is None and conn.session.helo is None and conn.session.tls
    # a large injection (more than one parser piece) is dropped just the same
    driver = Driver().play([EHLO, b"STARTTLS\r\n" + b"NOOP\r\n" * 20000 +
                            b"MAIL FROM:<evil@example.net>\r\n", EHLO])
    assert driver.codes() == ["220", "250", "220 2.0.0", "250"]
    assert not any(isinstance(e, MailFrom) for e in driver.events)


def test_starttls_not_configured() -> None:
    assert codes_after_ehlo(b"STARTTLS\r\n", settings=settings(tls_available=False)) == ["502 5.5.1"]
    driver = Driver(settings=settings(tls_available=False)).play([EHLO])
    assert b"250-STARTTLS" not in driver.replies()[1]


# --- BDAT specifics (RFC 3030) -------------------------------------------------------

def test_refused_bdat_chunk_is_skipped_not_executed() -> None:
    chunk = b"RCPT TO:<bob@example.com>\r\n"
    driver = Driver().play([EHLO, b"BDAT %d\r\n" % len(chunk) + chunk + b"NOOP\r\n"])
    assert driver.codes()[2:] == ["503 5.5.1", "250 2.0.0"]
    assert driver.conn.state is State.READY
    assert codes_after_ehlo(b"BDAT x\r\n", b"BDAT 1 FIRST\r\n") == ["501 5.5.4", "501 5.5.4"]


def test_bdat_and_data_do_not_mix() -> None:
    assert codes_after_ehlo(ENVELOPE + b"BDAT 1\r\nxDATA\r\n") == \
        ["250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1"]
    assert codes_after_ehlo(b"MAIL FROM:<a@example.net> BODY=BINARYMIME\r\n"
                            b"RCPT TO:<alice@example.com>\r\nDATA\r\n") == \
        ["250 2.1.0", "250 2.1.5", "503 5.5.1"]


def test_rset_between_bdat_chunks_aborts_the_message() -> None:
    driver = Driver().play([EHLO, ENVELOPE + b"BDAT 2\r\nab", b"RSET\r\n", b"BDAT 1 LAST\r\nx"])
    assert driver.codes()[2:] == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "503 5.5.1"]
    assert len(driver.aborted) == 1 and not driver.messages


# --- recipient policy through the protocol -------------------------------------------

def test_relay_is_denied_to_strangers_and_allowed_from_relay_networks() -> None:
    rcpts = (b"MAIL FROM:<a@example.net>\r\nRCPT TO:<someone@elsewhere.example>\r\n"
             b"RCPT TO:<x@relay.example>\r\nRCPT TO:<nobody@example.com>\r\n"
             b"RCPT TO:<postmaster@EXAMPLE.com>\r\n")
    assert codes_after_ehlo(rcpts) == ["250 2.1.0", "554 5.7.1", "250 2.1.5", "550 5.1.1",
                                       "250 2.1.5"]
    inside = PeerInfo("10.1.2.3", 5000)
    assert codes_after_ehlo(rcpts, peer=inside) == ["250 2.1.0", "250 2.1.5", "250 2.1.5",
                                                    "550 5.1.1", "250 2.1.5"]


def test_vrfy_and_expn_switches() -> None:
    policy = make_policy(aliases={"staff": ("alice", "bob")}, vrfy_enabled=True, expn_enabled=True)
    on = settings(vrfy_enabled=True, expn_enabled=True)
    driver = Driver(settings=on, policy=policy).play(
        [b"VRFY alice\r\n", b"VRFY <nobody@example.com>\r\n", b"EXPN staff\r\n", b"VRFY\r\n"])
    assert driver.codes()[1:] == ["250 2.1.5", "550 5.1.1", "250 2.1.5", "501 5.5.4"]
    assert driver.replies()[3] == [b"250-2.1.5 <alice@example.com>", b"250 2.1.5 <bob@example.com>"]
    # the defaults disclose nothing, whatever the policy would say
    assert Driver(policy=policy).play([b"VRFY alice\r\n", b"EXPN staff\r\n"]).codes()[1:] == \
        ["252 2.0.0", "502 5.5.1"]


def test_settings_are_validated() -> None:
    import pytest

    with pytest.raises(ValueError, match="hostname"):
        ServerSettings(hostname="bad host")
    with pytest.raises(ValueError, match="bare_line_endings"):
        ServerSettings(hostname="mx", bare_line_endings="fix")
    with pytest.raises(ValueError, match="512"):
        ServerSettings(hostname="mx", max_command_line=100)
    with pytest.raises(ValueError, match="max_junk_commands"):
        ServerSettings(hostname="mx", max_junk_commands=0)
