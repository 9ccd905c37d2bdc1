"""Who the workers run as: the root check, resolving --user/--group, dropping privileges.

Security notes:
- The master binds the listening sockets (port 25 needs root), reads the TLS key,
  recovers the spool and forks; it never reads a byte from a client.  Every worker
  drops to --user/--group (setgroups, setgid, setuid, in that order: setgid needs root)
  before it touches a client or the spool, and checks that root cannot be regained.
- Running as root without --user is refused when any listen address is not loopback:
  a bug in a session would otherwise hand root to the network.
- The spool (and the Maildir root) must belong to the worker user.  When it does not,
  the master gives it to that user once, at start-up, and says so.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from fastmta.config import Config

log = logging.getLogger("fastmta.master")


class PrivilegeError(Exception):
    """fastmta cannot run with the given user, group or ownership; the text says why."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The user and group the workers run as."""

    user: str
    uid: int
    group: str
    gid: int


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def root_refusal(config: Config, euid: int) -> str | None:
    """The message refusing to run as root without --user on a public address, or None."""
    if euid != 0 or config.user is not None:
        return None
    public = [text for text, (host, _port) in zip(config.listen, config.listen_addresses)
              if not is_loopback(host)]
    if not public:
        return None
    return (f"refusing to run as root while listening on {', '.join(public)}: give --user "
            "(and --group) so that the workers serving the network drop root, e.g. "
            "--user fastmta --group fastmta")


def resolve_identity(config: Config, euid: int) -> Identity | None:
    """The identity from --user/--group, or None to stay who we are."""
    if config.user is None:
        if config.group is not None:
            raise PrivilegeError("--group needs --user too (the group of which user?)")
        return None
    try:
        entry = pwd.getpwnam(config.user)
    except KeyError:
        raise PrivilegeError(f"--user {config.user}: no such user; create it (e.g. useradd "
                             "--system fastmta) or name an existing one") from None
    gid, group = entry.pw_gid, None
    if config.group is not None:
        try:
            group_entry = grp.getgrnam(config.group)
        except KeyError:
            raise PrivilegeError(f"--group {config.group}: no such group; create it or name an "
                                 "existing one") from None
        gid, group = group_entry.gr_gid, group_entry.gr_name
    if group is None:
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    if entry.pw_uid == 0:
        raise PrivilegeError(f"--user {config.user} is root; name an unprivileged user")
    if euid != 0 and (entry.pw_uid != euid or gid != os.getegid()):
        raise PrivilegeError(f"cannot switch to user {config.user}: fastmta is not running as "
                             "root; start it as root, or leave out --user/--group")
    return Identity(config.user, entry.pw_uid, group, gid)


def drop_privileges(identity: Identity) -> None:
    """Become `identity` for good (call in a worker, before it serves anyone)."""
    if os.geteuid() != 0:
        return  # resolve_identity made sure we already are that user
    os.setgroups([identity.gid])
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("root privileges could be regained after setuid; refusing to serve")


def check_reachable(identity: Identity, directory: Path) -> None:
    """Raise PrivilegeError unless the worker user may search every parent of `directory`
    (owning the spool is no use if a parent directory locks the user out)."""
    for parent in directory.resolve().parents:
        try:
            info = parent.stat()
        except OSError as exc:
            raise PrivilegeError(f"cannot check {parent}: {exc.strerror}") from None
        if info.st_uid == identity.uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid == identity.gid:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            raise PrivilegeError(f"the worker user {identity.user} cannot reach {directory}: "
                                 f"{parent} is not searchable by it (mode {info.st_mode & 0o777:o}"
                                 f"); put the spool elsewhere or allow it (chmod o+x {parent})")


def give_spool_to(identity: Identity, directories: list[Path]) -> None:
    """Make each directory tree belong to the worker user, if its top does not already.

    Checking the top only keeps start-up fast with a large queue; the whole tree is
    changed when the top is wrong (a first start, or a spool made by another user)."""
    for top in directories:
        try:
            top.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = top.stat()
        except OSError as exc:
            raise PrivilegeError(f"cannot create {top}: {exc.strerror}") from None
        check_reachable(identity, top)
        if info.st_uid == identity.uid and info.st_gid == identity.gid:
            continue
        changed = 0
        try:
            os.chown(top, identity.uid, identity.gid)
            for parent, dirs, files in os.walk(top):
                for name in dirs + files:
                    os.chown(os.path.join(parent, name), identity.uid, identity.gid,
                             follow_symlinks=False)
                    changed += 1
        except OSError as exc:
            raise PrivilegeError(f"cannot give {top} to {identity.user}:{identity.group}: "
                                 f"{exc.strerror}; run `chown -R {identity.user}:{identity.group} "
                                 f"{top}` yourself") from None
        log.warning("%s belonged to uid %d gid %d: gave it (and %d entries below it) to %s:%s, "
                    "the worker user", top, info.st_uid, info.st_gid, changed, identity.user,
                    identity.group)
