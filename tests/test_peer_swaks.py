"""Debian's swaks (the Swiss Army Knife for SMTP) against the receive server.

swaks is a real, independent SMTP client: plain, pipelined (--pipeline), 8-bit
content, STARTTLS (--tls, when swaks has Net::SSLeay).  Each message is read back
from the spool.  CI installs swaks; elsewhere the tests skip, saying why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.server import (
    HOSTNAME,
    make_tls_files,
    queue_id_of,
    split_received,
)

SWAKS = shutil.which("swaks")
pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(SWAKS is None, reason="swaks is not installed (apt-get install swaks)"),
]

# swaks sends the file with every line end as CRLF, dot-stuffs it and ends it with
# CRLF "." CRLF itself (so the file has no final line end: that would add a line).
MESSAGE = (b"From: sender@example.com\n"
           b"To: user@localhost\n"
           b"Subject: swaks\n"
           b"MIME-Version: 1.0\n"
           b"Content-Type: text/plain; charset=utf-8\n"
           b"Content-Transfer-Encoding: 8bit\n"
           b"\n"
           b".leading dot\n"
           b"caf\xc3\xa9 \xe2\x82\xac\n"
           b"last line")


def swaks_can_do_tls() -> str | None:
    """None if swaks can do STARTTLS here, else the reason it cannot."""
    assert SWAKS is not None
    support = subprocess.run([SWAKS, "--support"], capture_output=True, text=True, timeout=30,
                             check=False)
    for line in (support.stdout + support.stderr).splitlines():
        if "TLS" in line and "not available" in line:
            return f"this swaks cannot do TLS ({line.strip('* ')})"
    return None


def run_swaks(server, tmp_path: Path, *extra: str, to: str = "user@localhost") -> str:
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE)
    command = [SWAKS, "--server", f"{server.host}:{server.port}", "--ehlo", "swaks.test",
               "--from", "sender@example.com", "--to", to, "--data", f"@{data}",
               "--timeout", "10", *extra]
    result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    transcript = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, f"swaks failed ({result.returncode}):\n{transcript}\n" \
                                   f"{result.stderr.decode('utf-8', 'replace')}"
    return transcript


def check_stored(server, transcript: str, recipients: list[str], protocol: bytes) -> None:
    queue_id = queue_id_of(transcript.encode())
    assert server.queued_ids() == [queue_id]
    stored = server.read(queue_id)
    assert stored.envelope.sender == "sender@example.com"
    assert [r.address for r in stored.envelope.recipients] == recipients
    received, content = split_received(stored.content)
    assert (received["helo"], received["proto"]) == (b"swaks.test", protocol)
    assert content == MESSAGE.replace(b"\n", b"\r\n") + b"\r\n"


def test_swaks_plain(receive_server, tmp_path: Path) -> None:
    server = receive_server()
    transcript = run_swaks(server, tmp_path)
    assert f"220 {HOSTNAME} ESMTP" in transcript
    check_stored(server, transcript, ["user@localhost"], b"ESMTP")


def test_swaks_pipelined_with_several_recipients(receive_server, tmp_path: Path) -> None:
    server = receive_server()
    transcript = run_swaks(server, tmp_path, "--pipeline",
                           to="user@localhost,other@localhost,postmaster")
    check_stored(server, transcript, ["user@localhost", "other@localhost", "postmaster"],
                 b"ESMTP")


def test_swaks_sees_a_refused_recipient(receive_server, tmp_path: Path) -> None:
    server = receive_server(relay_networks="10.0.0.0/8")
    data = tmp_path / "message.eml"
    data.write_bytes(MESSAGE)
    result = subprocess.run(
        [SWAKS, "--server", f"{server.host}:{server.port}", "--from", "sender@example.com",
         "--to", "someone@remote.example", "--data", f"@{data}", "--timeout", "10"],
        capture_output=True, timeout=60, check=False)
    assert result.returncode != 0
    assert b"554 5.7.1 Relay access denied" in result.stdout
    assert server.queued_ids() == []


def test_swaks_starttls(receive_server, tmp_path: Path) -> None:
    reason = swaks_can_do_tls()
    if reason is not None:
        pytest.skip(reason)
    files = make_tls_files(tmp_path)
    server = receive_server(tls_cert=str(files.cert), tls_key=str(files.key))
    transcript = run_swaks(server, tmp_path, "--tls", "--tls-verify", "--tls-ca-path",
                           str(files.ca_cert), "--tls-sni", HOSTNAME)
    check_stored(server, transcript, ["user@localhost"], b"ESMTPS")
