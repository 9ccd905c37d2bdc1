"""Maildir delivery on real files: exact contents, names, safety of odd local parts, failures."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastmta.delivery.maildir import (
    Maildir,
    MaildirError,
    delivered_to_addresses,
    mailbox_directory_name,
)

MESSAGE = (b"Received: from client.example.org by mx.test with ESMTP id X; date\r\n"
           b"Subject: hello\r\n\r\nLine one\r\n.dot line\r\nbare\rCR stays\r\n")
EXPECTED_BODY = (b"Received: from client.example.org by mx.test with ESMTP id X; date\n"
                 b"Subject: hello\n\nLine one\n.dot line\nbare\rCR stays\n")


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i:i + size] for i in range(0, len(data), size))


def test_a_message_lands_in_new_with_return_path_and_delivered_to(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path / "mail", "mx.test")
    path = maildir.deliver("bob@example.com", "alice@example.org", lambda: [MESSAGE])
    expected = (b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.com\n"
                + EXPECTED_BODY)
    assert path.read_bytes() == expected
    assert path.parent == tmp_path / "mail" / "bob" / "new"
    name = re.fullmatch(r"(\d+)\.M(\d+)P(\d+)Q(\d+)R([0-9a-f]+)\.mx\.test,S=(\d+),W=(\d+)",
                        path.name)
    assert name, path.name
    assert int(name.group(3)) == os.getpid()
    assert int(name.group(6)) == len(expected)
    assert int(name.group(7)) == len(expected) + expected.count(b"\n")  # size with CRLF
    for sub in ("tmp", "new", "cur"):
        assert stat.S_IMODE(os.stat(tmp_path / "mail" / "bob" / sub).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path / "mail" / "bob" / "tmp") == []


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_crlf_split_across_chunks_still_becomes_lf(tmp_path: Path, size: int) -> None:
    maildir = Maildir(tmp_path, "mx.test")
    path = maildir.deliver("bob@example.com", "", lambda: chunks(MESSAGE, size))
    assert path.read_bytes() == b"Return-Path: <>\nDelivered-To: bob@example.com\n" + EXPECTED_BODY


def test_names_are_unique_and_the_host_name_is_escaped(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path, "odd/host:name")
    paths = {maildir.deliver("bob@example.com", "a@b.c", lambda: [b"x\r\n"]) for _ in range(50)}
    assert len(paths) == 50
    assert all(p.name.split(",")[0].endswith(".odd\\057host\\072name") for p in paths)


@pytest.mark.parametrize(("address", "directory"), [
    ("Bob@example.com", "bob"),
    ('"john doe"@example.com', "john%20doe"),
    ('"../../etc"@example.com', "%2E.%2F..%2Fetc"),
    (".hidden@example.com", "%2Ehidden"),
    ('"a%2Fb"@example.com', "a%252fb"),
    ("jos\u00e9@example.com", "jos\u00e9"),
    ("postmaster", "postmaster"),
])
def test_a_local_part_always_names_one_directory_under_the_root(
        tmp_path: Path, address: str, directory: str) -> None:
    assert mailbox_directory_name(address) == directory
    maildir = Maildir(tmp_path / "mail", "mx.test")
    path = maildir.deliver(address, "a@b.c", lambda: [b"x\r\n"])
    assert path.parent.parent == tmp_path / "mail" / directory
    assert path.resolve().is_relative_to((tmp_path / "mail").resolve())


def test_a_message_already_delivered_to_the_mailbox_is_a_loop(tmp_path: Path) -> None:
    headers = b"Delivered-To: other@example.com\r\nDelivered-To:\r\n  <Bob@Example.com>\r\n"
    seen = delivered_to_addresses(headers)
    assert seen == {"other@example.com", "bob@example.com"}
    maildir = Maildir(tmp_path, "mx.test")
    with pytest.raises(MaildirError) as caught:
        maildir.deliver("bob@example.com", "a@b.c", lambda: [headers + b"\r\nbody\r\n"],
                        delivered_to=seen)
    assert caught.value.status == "5.4.6" and caught.value.permanent
    assert "loop" in caught.value.text
    assert not (tmp_path / "bob").exists()


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken() -> Iterator[bytes]:
        yield b"Subject: half\r\n"
        raise OSError(5, "Input/output error")

    maildir = Maildir(tmp_path, "mx.test")
    with pytest.raises(MaildirError) as caught:
        maildir.deliver("bob@example.com", "a@b.c", broken)
    assert caught.value.status == "4.3.0" and not caught.value.permanent
    assert "retried" in caught.value.text
    assert os.listdir(tmp_path / "bob" / "tmp") == []
    assert os.listdir(tmp_path / "bob" / "new") == []


def test_an_unwritable_mail_root_is_a_transient_error_that_says_what_to_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "mail"
    blocker.write_bytes(b"")  # a file where the root directory should be
    maildir = Maildir(blocker, "mx.test")
    with pytest.raises(MaildirError) as caught:
        maildir.deliver("bob@example.com", "a@b.c", lambda: [b"x\r\n"])
    assert not caught.value.permanent
    assert "cannot create the Maildir" in caught.value.text


def test_copies_stay_out_of_new_until_committed_and_share_one_flush_per_mailbox(
        tmp_path: Path) -> None:
    maildir = Maildir(tmp_path, "mx.test")
    copies = [maildir.write(address, "a@b.c", lambda n=n: [b"Subject: %d\r\n\r\nx\r\n" % n])
              for n, address in enumerate(["bob@example.com", "bob@example.com",
                                           "bob@example.com", "dave@example.com"])]
    assert os.listdir(tmp_path / "bob" / "new") == []
    assert len(os.listdir(tmp_path / "bob" / "tmp")) == 3
    maildir.commit(copies)
    assert all(copy.committed and copy.error is None for copy in copies)
    subjects = sorted(re.findall(rb"Subject: (\d)", path.read_bytes())[0]
                      for user in ("bob", "dave") for path in (tmp_path / user / "new").iterdir())
    assert subjects == [b"0", b"1", b"2", b"3"]
    assert os.listdir(tmp_path / "bob" / "tmp") == []
    assert maildir.directory_fsyncs == 2  # one per mailbox, not one per copy
    maildir.commit(copies)  # committed copies are not committed twice
    assert maildir.directory_fsyncs == 2


def test_a_discarded_copy_leaves_nothing_behind(tmp_path: Path) -> None:
    maildir = Maildir(tmp_path, "mx.test")
    copy = maildir.write("bob@example.com", "a@b.c", lambda: [MESSAGE])
    maildir.discard([copy])
    maildir.commit([copy])  # too late: nothing to commit
    assert not copy.committed
    assert os.listdir(tmp_path / "bob" / "tmp") == [] and os.listdir(tmp_path / "bob" / "new") == []


def test_a_large_message_is_written_whole_in_several_writes(tmp_path: Path) -> None:
    body = b"".join(b"line %d of a long message\r\n" % n for n in range(30_000))  # ~800 KB
    maildir = Maildir(tmp_path, "mx.test")
    path = maildir.deliver("bob@example.com", "a@b.c", lambda: chunks(body, 65_537))
    expected = b"Return-Path: <a@b.c>\nDelivered-To: bob@example.com\n" + body.replace(b"\r\n", b"\n")
    assert path.read_bytes() == expected
    lines = expected.count(b"\n")
    assert path.name.endswith(f",S={len(expected)},W={len(expected) + lines}")
