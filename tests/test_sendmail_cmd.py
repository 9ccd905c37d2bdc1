"""`fastmta sendmail`: input rules (-i, -t, Bcc), added headers, submission to a running
`fastmta serve`, and -v direct delivery with its dialogue, fallback and verdicts.

Remote domains resolve through the test DNS server: example.test has MX 10 mx1 (127.0.0.2,
refusing connections) and MX 20 mx2 (127.0.0.3, an SMTP sink) on one port, the
configured outbound_port.  The local server is a real `python -m fastmta serve` with no
delivery workers, so what it queued stays in its spool for the test to read.
"""

from __future__ import annotations

import io
import os
import pwd
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.dns_server import DNSServer
from helpers.server import ServerProcess
from helpers.smtp_sinks import SMTPSink

from fastmta import cli
from fastmta.tools.sendmail_main import run_sendmail

REPO = Path(__file__).resolve().parent.parent
NO_SERVER = "is `fastmta serve` running? start it or use -v to deliver directly"
RCPT_REPLIES = {"gone@example.test": "550 5.1.1 no such user",
                "busy@example.test": "450 4.2.1 mailbox busy, try later"}


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("mta"), "--local-users", "postmaster")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mx2() -> Iterator[SMTPSink]:
    """The sink at mx2; mx1's address refuses connections on the same port."""
    with SMTPSink("127.0.0.3", rcpt_replies=RCPT_REPLIES) as sink, socket.socket() as mx1:
        mx1.bind(("127.0.0.2", sink.port))  # bound, never listening: RST to every SYN
        yield sink


@pytest.fixture
def zone(dns_server: DNSServer) -> DNSServer:
    dns_server.add("example.test", "MX", ["10 mx1.example.test", "20 mx2.example.test"])
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx2.example.test", "A", "127.0.0.3")
    dns_server.add("null.test", "MX", "0 .")
    return dns_server


@pytest.fixture
def refused_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def write_config(path: Path, dns: DNSServer, outbound_port: int, listen_port: int) -> Path:
    path.write_text(f'hostname = "client.test"\n'
                    f'dns_nameservers = ["{dns.nameserver}"]\n'
                    f'dns_timeout = 3\n'
                    f'outbound_port = {outbound_port}\n'
                    f'listen = ["127.0.0.1:{listen_port}"]\n')
    return path


@pytest.fixture
def config(tmp_path: Path, zone: DNSServer, mx2: SMTPSink, refused_port: int) -> Path:
    """No local server (its listen port refuses)."""
    return write_config(tmp_path / "fastmta.toml", zone, mx2.port, refused_port)


@pytest.fixture
def config_with_server(tmp_path: Path, zone: DNSServer, mx2: SMTPSink,
                       local_server: ServerProcess) -> Path:
    return write_config(tmp_path / "fastmta.toml", zone, mx2.port, local_server.port)


def sendmail_process(config: Path, *args: str,
                     message: bytes) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "fastmta", "sendmail", "-C", str(config),
                           *args], input=message, cwd=REPO, capture_output=True, timeout=60,
                          check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def sendmail(config: Path | None, *args: str, message: bytes) -> tuple[int, str, str]:
    """The command's body in this process, with the message on a fake stdin."""
    argv = ["sendmail", *(["-C", str(config)] if config else []), *args]
    parsed = cli.build_parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    status = run_sendmail(parsed, io.BytesIO(message), out, err)
    return status, out.getvalue(), err.getvalue()


def queued(server: ServerProcess, marker: bytes) -> list[tuple[list[str], bytes]]:
    """(recipients, content) of each message in the server's queue containing `marker`."""
    found = []
    for queue_id in server.queued_ids():
        stored = server.read(queue_id)
        if marker in stored.content:
            found.append(([r.address for r in stored.envelope.recipients], stored.content))
    return found


def ordered(text: str, *parts: str) -> None:
    """Each part appears in `text`, in this order."""
    position = 0
    for part in parts:
        found = text.find(part, position)
        assert found >= 0, f"{part!r} missing (in order) from:\n{text}"
        position = found + 1


# --- -v: direct delivery ---------------------------------------------------------------


def test_verbose_shows_mx_fallback_and_the_whole_dialogue(config: Path, mx2: SMTPSink) -> None:
    done = sendmail_process(config, "-v", "-f", "me@client.test", "bob@example.test",
                            message=b"Subject: fallback\n\nhello\n")
    assert done.returncode == 0, done.stdout + done.stderr
    port = mx2.port
    ordered(done.stdout,
            "bob@example.test... next hop:",
            "example.test mail is handled by 10 mx1.example.test.",
            "example.test mail is handled by 20 mx2.example.test.",
            f"=> try 1: mx1.example.test 127.0.0.2:{port}, MX preference 10",
            f"=> try 2: mx2.example.test 127.0.0.3:{port}, MX preference 20",
            f"Trying mx1.example.test[127.0.0.2]:{port} (MX preference 10)...",
            f"connect to mx1.example.test[127.0.0.2]:{port}: Connection refused",
            f"Trying mx2.example.test[127.0.0.3]:{port} (MX preference 20)...",
            f"Connected to mx2.example.test[127.0.0.3]:{port}.",
            "\n220 sink.test ESMTP test sink\n",
            "\n>>> EHLO client.test\n", "\n250-PIPELINING\n",
            "\n>>> MAIL FROM:<me@client.test>", "\n>>> RCPT TO:<bob@example.test>\n",
            "\n>>> DATA\n", "\n250 2.1.0 Sender ok\n", "\n250 2.1.5 Recipient ok\n",
            "\n354 End data with <CR><LF>.<CR><LF>\n", "\n>>> .\n",
            "\n250 2.0.0 Ok: queued as M1\n",
            "bob@example.test... Sent (250 2.0.0 Ok: queued as M1)\n")
    [message] = mx2.messages
    assert message.sender == "me@client.test" and message.recipients == ["bob@example.test"]
    assert b"\r\nSubject: fallback\r\n" in message.content
    assert message.content.endswith(b"\r\n\r\nhello\r\n")


def test_verbose_bounce_is_reported_with_its_exit_status(config: Path, mx2: SMTPSink) -> None:
    status, out, err = sendmail(config, "-v", "bob@example.test", "gone@example.test",
                                message=b"Subject: two\n\nhi\n")
    assert status == os.EX_NOUSER, out + err
    assert "bob@example.test... Sent (250 2.0.0 Ok: queued as M1)" in out
    assert ("gone@example.test... bounced: host mx2.example.test[127.0.0.3]:"
            f"{mx2.port} said: 550 5.1.1 no such user (in reply to RCPT TO)") in out
    assert mx2.messages[0].recipients == ["bob@example.test"]


def test_verbose_null_mx_bounces_with_no_host(config: Path, mx2: SMTPSink) -> None:
    status, out, _ = sendmail(config, "-v", "someone@null.test", message=b"\nhi\n")
    assert status == os.EX_NOHOST
    assert "someone@null.test... bounced: 5.1.10 domain null.test accepts no mail" in out
    assert out.endswith("\n  hint: the domain says it takes no mail at all: ask the recipient "
                        "for an address that works\n")
    assert mx2.connections == 0


def test_verbose_nxdomain_bounce_says_what_to_do(config: Path, mx2: SMTPSink) -> None:
    status, out, _ = sendmail(config, "-v", "someone@gone.test", message=b"\nhi\n")
    assert status == os.EX_NOHOST
    assert out.endswith(
        "someone@gone.test... bounced: 5.1.2 domain gone.test does not exist (NXDOMAIN)\n"
        "  hint: a typo in the address, or a domain that expired: ask the recipient for an "
        "address that works\n")
    assert mx2.connections == 0


def test_verbose_shows_and_delivers_a_domain_while_others_are_looked_up(
        config: Path, zone: DNSServer, mx2: SMTPSink) -> None:
    """late.test's DNS answers only once bob@example.test's next hop is on the screen.  So
    example.test must be shown while late.test is still being looked up (dnspython asks
    again within dns_timeout, and then gets the answer); were every domain routed before
    anything is shown, late.test's lookup would time out first, and ann would be deferred."""
    zone.add("late.test", "A", "127.0.0.3")  # mx2's address: an implicit MX
    zone.fail("late.test", "timeout")

    class Screen(io.StringIO):
        def write(self, text: str) -> int:
            if text.startswith("bob@example.test... next hop:"):
                zone.heal("late.test")
            return super().write(text)

    argv = ["sendmail", "-C", str(config), "-v", "bob@example.test", "ann@late.test"]
    screen, err = Screen(), io.StringIO()
    status = run_sendmail(cli.build_parser().parse_args(argv), io.BytesIO(b"\nhi\n"), screen,
                          err)
    out = screen.getvalue()
    assert status == 0, out + err.getvalue()
    ordered(out, "bob@example.test... next hop:", "\n>>> RCPT TO:<bob@example.test>\n",
            "\n>>> .\n", "ann@late.test... next hop:", "late.test has address 127.0.0.3",
            "\n>>> RCPT TO:<ann@late.test>\n", "bob@example.test... Sent",
            "ann@late.test... Sent")
    assert [m.recipients for m in mx2.messages] == [["bob@example.test"], ["ann@late.test"]]


def test_verbose_deferral_without_a_local_server_is_never_silent(config: Path,
                                                                 mx2: SMTPSink) -> None:
    status, out, _ = sendmail(config, "-v", "busy@example.test", message=b"\nhi\n")
    assert status == os.EX_TEMPFAIL
    ordered(out, "busy@example.test... not delivered now: handing to the local server",
            "Connection refused",
            "busy@example.test... deferred: host mx2.example.test[127.0.0.3]:"
            f"{mx2.port} said: 450 4.2.1 mailbox busy, try later (in reply to RCPT TO); "
            "NOT queued: no local server at 127.0.0.1:")


def test_verbose_hands_deferred_and_local_recipients_to_the_running_server(
        config_with_server: Path, mx2: SMTPSink, local_server: ServerProcess) -> None:
    done = sendmail_process(config_with_server, "-v", "bob@example.test", "busy@example.test",
                            "postmaster@localhost", message=b"Subject: handover-1\n\nhi\n")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "bob@example.test... Sent (250 2.0.0 Ok: queued as M1)" in out
    assert ("busy@example.test... deferred: host mx2.example.test[127.0.0.3]:"
            f"{mx2.port} said: 450 4.2.1 mailbox busy, try later (in reply to RCPT TO); "
            "queued on the local server for retry (250 2.0.0 Ok: queued as ") in out
    assert ("postmaster@localhost... handed to the local server for local delivery "
            "(250 2.0.0 Ok: queued as ") in out
    assert f"Connected to [127.0.0.1]:{local_server.port}." in out
    [(recipients, _)] = queued(local_server, b"Subject: handover-1")
    assert recipients == ["busy@example.test", "postmaster@localhost"]
    assert mx2.messages[0].recipients == ["bob@example.test"]


# --- input rules and headers ------------------------------------------------------------


def test_t_takes_to_cc_bcc_and_strips_bcc(config: Path, mx2: SMTPSink) -> None:
    message = (b"To: Ann <ann@example.test>\nCc: \"Carl, C.\" <carl@example.test>,\n"
               b"  dora@example.test\nBcc: hidden@example.test\nSubject: -t\n\nbody\n")
    status, out, err = sendmail(config, "-t", "-v", "extra@example.test", message=message)
    assert status == 0, out + err
    [sent] = mx2.messages
    assert sent.recipients == ["extra@example.test", "ann@example.test", "carl@example.test",
                               "dora@example.test", "hidden@example.test"]
    assert b"Bcc" not in sent.content and b"hidden" not in sent.content
    assert b"\r\nTo: Ann <ann@example.test>\r\n" in sent.content
    assert b'\r\nCc: "Carl, C." <carl@example.test>,\r\n  dora@example.test\r\n' in sent.content


def test_t_prefers_resent_fields_of_a_resent_message(config: Path, mx2: SMTPSink) -> None:
    message = (b"To: ann@example.test\nResent-To: rita@example.test\n"
               b"Resent-Bcc: rob@example.test\n\nforwarded\n")
    status, _, _ = sendmail(config, "-t", "-v", message=message)
    assert status == 0
    assert mx2.messages[0].recipients == ["rita@example.test", "rob@example.test"]
    assert b"rob@" not in mx2.messages[0].content


def test_a_single_dot_ends_the_input_without_i(config: Path, mx2: SMTPSink) -> None:
    status, _, _ = sendmail(config, "-v", "bob@example.test",
                            message=b"Subject: dot\n\nbefore\n.\nafter\n")
    assert status == 0
    assert mx2.messages[0].content.endswith(b"\r\n\r\nbefore\r\n")


@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_i_keeps_a_line_holding_a_single_dot(config: Path, mx2: SMTPSink, flag: str) -> None:
    if flag == "-i":  # once through the real command line
        done = sendmail_process(config, flag, "-v", "bob@example.test",
                                message=b"Subject: dot\n\nbefore\n.\nafter\n")
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        status, out, err = sendmail(config, flag, "-v", "bob@example.test",
                                    message=b"Subject: dot\n\nbefore\n.\nafter\n")
        assert status == 0, out + err
    [sent] = mx2.messages
    assert sent.content.endswith(b"\r\n\r\nbefore\r\n.\r\nafter\r\n")
    assert b"\r\n..\r\n" in sent.wire  # dot-stuffed on the wire (RFC 5321 4.5.2)


def test_missing_from_date_and_message_id_are_added(config: Path, mx2: SMTPSink) -> None:
    status, _, _ = sendmail(config, "-v", "-f", "jane@client.test", "-F", "Jane Doe",
                            "bob@example.test", message=b"Subject: bare\n\nhi\n")
    assert status == 0
    content = mx2.messages[0].content
    assert content.startswith(b"Received: by client.test (fastmta sendmail, from userid "
                              + str(os.getuid()).encode() + b");\r\n\t")
    assert b"\r\nFrom: Jane Doe <jane@client.test>\r\n" in content
    assert b"\r\nDate: " in content
    assert b"\r\nMessage-ID: <" in content and b"@client.test>\r\n" in content


def test_default_from_is_the_login_name_at_hostname(config: Path, mx2: SMTPSink) -> None:
    login = pwd.getpwuid(os.getuid()).pw_name
    status, _, _ = sendmail(config, "-v", "bob@example.test", message=b"\nhi\n")
    assert status == 0
    assert mx2.messages[0].sender == f"{login}@client.test"
    assert f"\r\nFrom: {login}@client.test\r\n".encode() in mx2.messages[0].content


def test_headers_already_present_are_kept_once(config: Path, mx2: SMTPSink) -> None:
    message = (b"From: Ann <ann@example.test>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
               b"Message-ID: <x@y>\nSubject: full\n\nhi\n")
    status, _, _ = sendmail(config, "-v", "bob@example.test", message=message)
    assert status == 0
    content = mx2.messages[0].content
    for field in (b"\r\nFrom: ", b"\r\nDate: ", b"\r\nMessage-ID: "):
        assert content.count(field) == 1
    assert b"\r\nMessage-ID: <x@y>\r\n" in content


# --- default mode: submit to the local server --------------------------------------------


def test_submits_to_the_running_server_and_exits_0_once_queued(
        config_with_server: Path, local_server: ServerProcess, mx2: SMTPSink) -> None:
    done = sendmail_process(config_with_server, "-f", "me@client.test", "bob@example.test",
                            message=b"Subject: submit-1\n\nqueued, not sent\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    [(recipients, data)] = queued(local_server, b"Subject: submit-1")
    assert recipients == ["bob@example.test"]
    assert b"queued, not sent" in data and b"\r\nMessage-ID: <" in data
    assert mx2.connections == 0  # queued only; delivery is the server's job


def test_a_recipient_the_server_refuses_is_reported_and_the_rest_queued(
        config_with_server: Path, local_server: ServerProcess) -> None:
    status, out, err = sendmail(config_with_server, "bob@example.test", "nobody@localhost",
                                message=b"Subject: submit-2\n\nhi\n")
    assert status == os.EX_NOUSER and out == ""
    assert err.startswith("fastmta sendmail: nobody@localhost... bounced: the local server "
                          "refused it: 550 5.1.1 ")
    [(recipients, _)] = queued(local_server, b"Subject: submit-2")
    assert recipients == ["bob@example.test"]


def test_the_fastmta_sendmail_console_script_submits(
        config_with_server: Path, local_server: ServerProcess, mx2: SMTPSink) -> None:
    """The `fastmta-sendmail` command pip installs ([project.scripts]), run as itself."""
    script = Path(sysconfig.get_path("scripts")) / "fastmta-sendmail"
    assert script.is_file(), f"{script} is missing: reinstall the package (pip install -e .)"
    done = subprocess.run([str(script), "-C", str(config_with_server), "-f", "me@client.test",
                           "bob@example.test"], input=b"Subject: submit-3\n\nby script\n",
                          cwd=REPO, capture_output=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    [(recipients, data)] = queued(local_server, b"Subject: submit-3")
    assert recipients == ["bob@example.test"] and b"\r\n\r\nby script\r\n" in data
    assert mx2.connections == 0


def test_no_server_means_tempfail_with_a_clear_message(config: Path) -> None:
    done = sendmail_process(config, "bob@example.test", message=b"\nhi\n")
    assert done.returncode == os.EX_TEMPFAIL
    assert done.stdout == ""
    assert "cannot submit to the local server at 127.0.0.1:" in done.stderr
    assert NO_SERVER in done.stderr


# --- usage ----------------------------------------------------------------------------------


def test_no_recipients_is_a_usage_error(config: Path) -> None:
    status, _, err = sendmail(config, message=b"\nhi\n")
    assert status == os.EX_USAGE
    assert "no recipients: name them as arguments, or use -t" in err


def test_unknown_option_exits_with_ex_usage(config: Path) -> None:
    done = sendmail_process(config, "-Z", "bob@example.test", message=b"")
    assert done.returncode == os.EX_USAGE
    assert "unknown option '-Z'" in done.stderr


def test_an_option_after_a_recipient_is_refused_not_mailed(config: Path, mx2: SMTPSink) -> None:
    status, _, err = sendmail(config, "-v", "bob@example.test", "-i", message=b"\nhi\n")
    assert status == os.EX_USAGE
    assert "'-i' came after the first recipient" in err
    assert mx2.connections == 0


def test_a_bad_address_in_the_header_is_a_data_error(config: Path, mx2: SMTPSink) -> None:
    status, _, err = sendmail(config, "-t", "-v", message=b"To: a b c@@example.test\n\nhi\n")
    assert status == os.EX_DATAERR
    assert "(in the message's header) is not a valid recipient address" in err
    assert mx2.connections == 0
