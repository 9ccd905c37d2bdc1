"""Local delivery into Maildirs (https://cr.yp.to/proto/maildir.html), one per local user.

Layout: `<mail_root>/<user>/{tmp,new,cur}`, where <user> is the mailbox's local part,
unquoted and lower-cased (the policy's alias resolution already lower-cases names), with
"/", NUL, control characters, "%" and a leading "." written as %XX, so a local part can
never name a path outside its own directory.  Local domains share one user namespace, as
in Postfix's local(8).  Missing directories are created (0700) on the first delivery and
their parents fsynced, so a new mailbox survives a crash as surely as the mail in it.

One delivery:
1. create `tmp/<unique>` with O_EXCL (0600); write `Return-Path: <sender>` (RFC 5321 4.4),
   `Delivered-To: <mailbox>`, then the message with CRLF turned into LF (the Unix
   convention every Maildir reader expects; a lone CR is kept);
2. fsync the file, rename it to `new/<unique>,S=<bytes>,W=<bytes with CRLF>` (the sizes
   Dovecot and Courier read from the name), fsync `new/`.
Only then is the recipient delivered; a crash before step 2 ends leaves at most a file in
tmp/, which readers ignore (and clean up after 36 hours, as the spec says).

Unique names follow the spec's modern form: seconds, `M` microseconds, `P` pid, `Q` a
per-process counter, `R` random bits, then the host name (with "/" and ":" escaped as
\\057 and \\072).  Unique across processes, hosts and a clock stepped back.

A message that already carries `Delivered-To: <this mailbox>` is refused with 5.4.6, the
classic mail-forwarding-loop check (an alias forwarding to an address that comes back).

`LocalDelivery` is the local transport around it: each recipient is resolved through the
aliases and catch-all (`RecipientPolicy.resolve_local`); local mailboxes get a Maildir
copy each, and the remote addresses an alias names are forwarded as one new queued
message (same sender, `Delivered-To: <alias>` on top, NOTIFY and ORCPT carried over), as
Postfix's local(8) does.  A recipient counts as delivered only when all its copies are (so
a retry after one copy failed, e.g. one mailbox over quota, can repeat the others).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from fastmta.delivery.dsn import AttemptError, xtext_encode
from fastmta.protocol.address import split_mailbox, unquote_local_part
from fastmta.spool import Envelope, MessageFile, Recipient, Spool

__all__ = ["LocalDelivery", "Maildir", "MaildirError", "delivered_to_addresses",
           "mailbox_directory_name"]

_counter = itertools.count(1)
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-+=!#$&'*^`{|}~")
_DELIVERED_TO = re.compile(rb"^delivered-to:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


class MaildirError(Exception):
    """A delivery failed; `status` is the RFC 3463 code for the DSN or the retry."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")


def mailbox_directory_name(address: str) -> str:
    """The directory under mail_root for a local mailbox address (or a bare local part)."""
    local = split_mailbox(address)[0] if "@" in address else address
    name = unquote_local_part(local).lower()
    if not name:
        raise MaildirError("5.1.3", f"{address!r} has an empty local part; no mailbox can hold it")
    out = []
    for position, char in enumerate(name):
        if char in _SAFE and not (position == 0 and char == "."):
            out.append(char)
        elif ord(char) > 127 and char.isprintable():
            out.append(char)  # UTF-8 local parts (RFC 6531) stay readable
        else:
            out.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape")))
    return "".join(out)


def delivered_to_addresses(header_block: bytes) -> frozenset[str]:
    """The addresses of every Delivered-To field in a header block, lower-cased."""
    found = set()
    for match in _DELIVERED_TO.finditer(header_block):
        value = b" ".join(match.group(1).split()).decode("utf-8", "surrogateescape")
        found.add(value.strip().strip("<>").lower())
    return frozenset(found)


class Maildir:
    """Delivers into the Maildirs under `root`; `hostname` goes into unique names."""

    def __init__(self, root: str | os.PathLike[str], hostname: str) -> None:
        self.root = Path(root)
        self._host = hostname.replace("/", "\\057").replace(":", "\\072") or "localhost"

    def path_for(self, address: str) -> Path:
        """The Maildir of a local mailbox address."""
        return self.root / mailbox_directory_name(address)

    def deliver(self, address: str, sender: str, content: Callable[[], Iterable[bytes]], *,
                delivered_to: frozenset[str] = frozenset()) -> Path:
        """Deliver one copy to `address`'s Maildir and return the file's path in new/.

        `content()` gives a fresh iterator over the message (CRLF line ends, as spooled).
        `delivered_to` holds the message's existing Delivered-To addresses (loop check).
        Raises MaildirError (transient for disk and permission trouble, so it is retried)."""
        if address.lower() in delivered_to:
            raise MaildirError("5.4.6", f"mail forwarding loop for {address}: the message was "
                               "already delivered to this mailbox (Delivered-To); check the aliases")
        maildir = self.path_for(address)
        try:
            self._make_maildir(maildir)
        except OSError as exc:
            raise _error(exc, f"cannot create the Maildir {maildir}") from exc
        base = self._unique_name()
        tmp_path = maildir / "tmp" / base
        prefix = (f"Return-Path: <{sender}>\nDelivered-To: {address}\n"
                  .encode("utf-8", "surrogateescape"))
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _error(exc, f"cannot create {tmp_path}") from exc
        try:
            with open(fd, "wb", buffering=1 << 16) as out:
                out.write(prefix)
                size, lines = len(prefix), prefix.count(b"\n")
                for piece in _crlf_to_lf(content()):
                    out.write(piece)
                    size += len(piece)
                    lines += piece.count(b"\n")
                out.flush()
                os.fsync(out.fileno())
            final = maildir / "new" / f"{base},S={size},W={size + lines}"
            os.rename(tmp_path, final)
            _fsync_directory(maildir / "new")
        except BaseException as exc:
            _unlink_quietly(tmp_path)
            if isinstance(exc, OSError):
                raise _error(exc, f"cannot write to the Maildir {maildir}") from exc
            raise
        return final

    # --- internals -------------------------------------------------------------------

    def _unique_name(self) -> str:
        seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        return (f"{seconds}.M{nanoseconds // 1000}P{os.getpid()}Q{next(_counter)}"
                f"R{secrets.token_hex(6)}.{self._host}")

    def _make_maildir(self, maildir: Path) -> None:
        if (maildir / "new").is_dir() and (maildir / "tmp").is_dir() and (maildir / "cur").is_dir():
            return
        created = []
        for directory in (self.root, maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
            try:
                os.mkdir(directory, 0o700)
                created.append(directory)
            except FileExistsError:
                pass
        for directory in created:  # a new directory entry is durable once its parent is synced
            _fsync_directory(directory.parent)


_FORWARDED_MAIL_PARAMS = ("BODY", "SMTPUTF8", "RET", "ENVID")


class LocalDelivery:
    """The local transport: aliases, catch-all, Maildirs and forwarding.  Blocking: run
    `deliver` in a thread.  `resolve(address)` is RecipientPolicy.resolve_local,
    `is_local(domain)` RecipientPolicy.is_local."""

    def __init__(self, maildir: Maildir, spool: Spool, resolve: Callable[[str], list[str]],
                 is_local: Callable[[str], bool], hostname: str) -> None:
        self.maildir = maildir
        self.spool = spool
        self.resolve = resolve
        self.is_local = is_local
        self.hostname = hostname

    def deliver(self, message: MessageFile, address: str, params: dict[str, str | None],
                delivered_to: frozenset[str], already: set[str]) -> tuple[AttemptError | None, str]:
        """Deliver one local recipient: (None, what was done) or (the error, "").

        `already`: mailboxes this message reached in this attempt (filled in here), so two
        recipients that lead to one mailbox (an alias and its member) make one copy."""
        targets = self.resolve(address)
        if not targets:
            return AttemptError("5.1.1", f"no mailbox for {address} here (the user or alias "
                                "was removed after the message was accepted)"), ""
        done = []
        remote = []
        for target in targets:
            domain = split_mailbox(target)[1]
            if target != address and domain and not self.is_local(domain):
                remote.append(target)
                continue
            if target.lower() in already:
                done.append(f"{target} already has a copy")
                continue
            try:
                path = self.maildir.deliver(target, message.envelope.sender,
                                            lambda: message.iter_body(verify=True),
                                            delivered_to=delivered_to)
            except MaildirError as exc:
                return AttemptError(exc.status, exc.text), ""
            already.add(target.lower())
            done.append(f"maildir {path.parent.parent.name}")
        if remote:
            if address.lower() in delivered_to:
                return AttemptError("5.4.6", f"mail forwarding loop for {address}: the message "
                                    "already passed this alias (Delivered-To); check the aliases"), ""
            queue_id = self._forward(message, address, params, remote)
            done.append(f"forwarded as {queue_id} to {', '.join(remote)}")
        return None, "; ".join(done)

    def _forward(self, message: MessageFile, alias: str, params: dict[str, str | None],
                 targets: list[str]) -> str:
        envelope = message.envelope
        rcpt_params: dict[str, str | None] = {}
        if params.get("NOTIFY"):
            rcpt_params["NOTIFY"] = params["NOTIFY"]
        if params.get("ORCPT"):
            rcpt_params["ORCPT"] = params["ORCPT"]
        elif alias.isascii():
            rcpt_params["ORCPT"] = "rfc822;" + xtext_encode(alias)
        forwarded = Envelope(
            sender=envelope.sender,
            recipients=[Recipient(target, dict(rcpt_params)) for target in targets],
            mail_params={key: value for key, value in envelope.mail_params.items()
                         if key in _FORWARDED_MAIL_PARAMS},
            client_address="", helo=self.hostname, protocol="LOCAL")
        prefix = f"Delivered-To: {alias}\r\n".encode("utf-8", "surrogateescape")
        return self.spool.enqueue(forwarded, _chain(prefix, message.iter_body(verify=True)))


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _crlf_to_lf(chunks: Iterable[bytes]) -> Iterable[bytes]:
    """The chunks with every CRLF turned into LF, also across chunk boundaries."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        carry = b""
        if data.endswith(b"\r"):
            carry, data = b"\r", data[:-1]
        if data:
            yield data.replace(b"\r\n", b"\n")
    if carry:
        yield carry


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _error(exc: OSError, what: str) -> MaildirError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.EDQUOT:
        return MaildirError("4.2.2", f"{what}: {reason}: the mailbox is over its quota; "
                            "it will be retried")
    if exc.errno == errno.ENOSPC:
        return MaildirError("4.3.1", f"{what}: {reason}: free disk space on the mail file "
                            "system; it will be retried")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return MaildirError("4.3.0", f"{what}: {reason}: the delivery worker's user must be "
                            "able to write there; it will be retried")
    return MaildirError("4.3.0", f"{what}: {reason}; it will be retried")
