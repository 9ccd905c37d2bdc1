"""Maildir delivery (https://cr.yp.to/proto/maildir.html): one copy of a message into one
local user's Maildir, durably.  `fastmta.delivery.local` decides which mailboxes get a copy.

Layout: `<mail_root>/<user>/{tmp,new,cur}`, where <user> is the mailbox's local part,
unquoted and lower-cased (the policy's alias resolution already lower-cases names), with
"/", NUL, control characters, "%" and a leading "." written as %XX, so a local part can
never name a path outside its own directory.  Local domains share one user namespace, as
in Postfix's local(8).  Missing directories are created (0700) on the first delivery and
their parents fsynced, so a new mailbox survives a crash as surely as the mail in it.

One copy, in two calls so that many copies share the flushes:
1. `write()`: create `tmp/<unique>` with O_EXCL (0600) and write `Return-Path: <sender>`
   (RFC 5321 4.4), `Delivered-To: <mailbox>` and the message with CRLF turned into LF (the
   Unix convention every Maildir reader expects; a lone CR is kept), the two header
   lines in the same write() as the start of the message;
2. `commit(copies)`: fsync each file, rename it to `new/<unique>,S=<bytes>,W=<bytes with
   CRLF>` (the sizes Dovecot and Courier read from the name), then fsync each `new/`
   once for all the renames into it (group commit).
A copy counts as delivered only after step 2.  A crash before then leaves at most a file
in tmp/, which readers ignore (and clean up after 36 hours, as the spec says), or a file
in new/ whose recipient is still pending in the spool and gets a second copy on the
retry.  A copy whose fsync, rename or directory fsync fails is removed again and carries
its error, so a retry does not leave two.  `deliver()` is both steps for one copy.

Unique names follow the spec's modern form: seconds, `M` microseconds, `P` pid, `Q` a
per-process counter, `R` random bits, then the host name (with "/" and ":" escaped as
\\057 and \\072).  Unique across processes, hosts and a clock stepped back.

A message that already carries `Delivered-To: <this mailbox>` is refused with 5.4.6, the
classic mail-forwarding-loop check (an alias forwarding to an address that comes back).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastmta.protocol.address import split_mailbox, unquote_local_part
from fastmta.spool.fsutil import fsync_directory

__all__ = ["Maildir", "MaildirCopy", "MaildirError", "delivered_to_addresses",
           "mailbox_directory_name"]

_counter = itertools.count(1)
_random = random.Random()  # the R part of names: unpredictable enough, no syscall per name
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-+=!#$&'*^`{|}~")
_DELIVERED_TO = re.compile(rb"^delivered-to:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_WRITE_BATCH = 1 << 18  # bytes gathered before a write: a small message is one write()


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


@dataclass(slots=True)
class MaildirCopy:
    """One copy made by `Maildir.write`: complete in tmp/ until `Maildir.commit`."""

    address: str  # the mailbox it is for
    tmp_path: str
    final_path: str  # its name in new/
    fd: int  # open until committed
    committed: bool = False  # durable in new/
    error: MaildirError | None = None  # why the commit failed (nothing is left behind)

    @property
    def mailbox(self) -> str:
        """The Maildir's directory name (for the log)."""
        return os.path.basename(os.path.dirname(os.path.dirname(self.final_path)))


class Maildir:
    """Delivers into the Maildirs under `root`; `hostname` goes into unique names.  Copies
    may be written and committed by one thread at a time."""

    def __init__(self, root: str | os.PathLike[str], hostname: str) -> None:
        self.root = Path(root)
        self._root = os.fspath(root)
        self._host = hostname.replace("/", "\\057").replace(":", "\\072") or "localhost"
        self._known: set[str] = set()  # Maildirs known to exist: no stat per delivery
        self.directory_fsyncs = 0  # for tests and measurements

    def path_for(self, address: str) -> Path:
        """The Maildir of a local mailbox address."""
        return self.root / mailbox_directory_name(address)

    def deliver(self, address: str, sender: str, content: Callable[[], Iterable[bytes]], *,
                delivered_to: frozenset[str] = frozenset()) -> Path:
        """Deliver one copy to `address`'s Maildir durably; return the file's path in new/.

        `content()` gives a fresh iterator over the message (CRLF line ends, as spooled).
        `delivered_to` holds the message's existing Delivered-To addresses (loop check).
        Raises MaildirError (transient for disk and permission trouble, so it is retried)."""
        copy = self.write(address, sender, content, delivered_to=delivered_to)
        self.commit([copy])
        if copy.error is not None:
            raise copy.error
        return Path(copy.final_path)

    def write(self, address: str, sender: str, content: Callable[[], Iterable[bytes]], *,
              delivered_to: frozenset[str] = frozenset()) -> MaildirCopy:
        """Step 1: write a copy into tmp/ (not flushed); `commit()` it, or `discard()` it.
        Raises MaildirError (nothing left behind), or what `content()` raises."""
        if address.lower() in delivered_to:
            raise MaildirError("5.4.6", f"mail forwarding loop for {address}: the message was "
                               "already delivered to this mailbox (Delivered-To); check the aliases")
        maildir = f"{self._root}/{mailbox_directory_name(address)}"
        base = self._unique_name()
        tmp_path = f"{maildir}/tmp/{base}"
        prefix = (f"Return-Path: <{sender}>\nDelivered-To: {address}\n"
                  .encode("utf-8", "surrogateescape"))
        fd = self._create(maildir, tmp_path)
        try:
            size, lines = _write_converted(fd, prefix, content())
            _start_writeback(fd)
        except BaseException as exc:
            os.close(fd)
            _unlink_quietly(tmp_path)
            if isinstance(exc, OSError):
                raise _error(exc, f"cannot write to the Maildir {maildir}") from exc
            raise
        return MaildirCopy(address, tmp_path, f"{maildir}/new/{base},S={size},W={size + lines}", fd)

    def commit(self, copies: Sequence[MaildirCopy]) -> None:
        """Step 2 for every copy not committed yet: fsync the files, rename them into new/,
        then fsync each new/ once.  Never raises for a copy: a failed one gets `error`."""
        renamed: dict[str, list[MaildirCopy]] = {}
        for copy in copies:
            if copy.fd < 0:
                continue  # committed or failed already
            fd, copy.fd = copy.fd, -1
            try:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(copy.tmp_path, copy.final_path)
            except OSError as exc:
                _unlink_quietly(copy.tmp_path)
                copy.error = _error(exc, f"cannot write {copy.tmp_path}")
                continue
            renamed.setdefault(os.path.dirname(copy.final_path), []).append(copy)
        for directory, members in renamed.items():
            try:
                fsync_directory(directory)
                self.directory_fsyncs += 1
            except OSError as exc:
                error = _error(exc, f"cannot sync the Maildir directory {directory}")
                for copy in members:  # not durable: take them back, the retry makes new ones
                    _unlink_quietly(copy.final_path)
                    copy.error = error
                continue
            for copy in members:
                copy.committed = True

    def discard(self, copies: Iterable[MaildirCopy]) -> None:
        """Drop copies that will not be committed (the attempt failed before)."""
        for copy in copies:
            if copy.fd >= 0:
                os.close(copy.fd)
                copy.fd = -1
                _unlink_quietly(copy.tmp_path)

    # --- internals -------------------------------------------------------------------

    def _create(self, maildir: str, tmp_path: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for _ in range(2):
            if maildir not in self._known:
                try:
                    self._make_maildir(maildir)
                except OSError as exc:
                    raise _error(exc, f"cannot create the Maildir {maildir}") from exc
                self._known.add(maildir)
            try:
                return os.open(tmp_path, flags, 0o600)
            except FileNotFoundError:
                self._known.discard(maildir)  # removed since we saw it: make it again
            except OSError as exc:
                raise _error(exc, f"cannot create {tmp_path}") from exc
        raise MaildirError("4.3.0", f"cannot create {tmp_path}: the Maildir keeps disappearing; "
                           "check what removes it; it will be retried")

    def _unique_name(self) -> str:
        seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        return (f"{seconds}.M{nanoseconds // 1000}P{os.getpid()}Q{next(_counter)}"
                f"R{_random.getrandbits(48):012x}.{self._host}")

    def _make_maildir(self, maildir: str) -> None:
        created = []
        for directory in (self._root, maildir, f"{maildir}/tmp", f"{maildir}/new",
                          f"{maildir}/cur"):
            try:
                os.mkdir(directory, 0o700)
                created.append(directory)
            except FileExistsError:
                pass
        for directory in created:  # a new directory entry is durable once its parent is synced
            fsync_directory(os.path.dirname(directory))


def _crlf_to_lf(chunks: Iterable[bytes]) -> Iterator[bytes]:
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



def _write_converted(fd: int, prefix: bytes, chunks: Iterable[bytes]) -> tuple[int, int]:
    """Write `prefix` then the chunks with CRLF as LF; return (bytes, newlines) written."""
    pending = [prefix]
    gathered = size = len(prefix)
    lines = prefix.count(b"\n")
    for piece in _crlf_to_lf(chunks):
        pending.append(piece)
        gathered += len(piece)
        size += len(piece)
        lines += piece.count(b"\n")
        if gathered >= _WRITE_BATCH:
            _write_all(fd, pending)
            pending, gathered = [], 0
    _write_all(fd, pending)
    return size, lines


def _write_all(fd: int, parts: list[bytes]) -> None:
    """writev every part, resuming after a short write (a file system filling up)."""
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views[:1024])  # IOV_MAX
        if written == 0:
            raise OSError(errno.EIO, "write made no progress")
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


_sync_file_range = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback, do not wait


def _start_writeback(fd: int) -> None:
    """Start writing the file out now (sync_file_range(2), Linux), so that the fsyncs of a
    batch find their blocks allocated together and share one journal commit."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a hint: fsync reports errors


def _unlink_quietly(path: str) -> None:
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
