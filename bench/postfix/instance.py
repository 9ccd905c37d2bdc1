"""A private, loopback-only Postfix instance in a temp dir, for bench/compare.py.

Derived from ../shared/anchors/postfix_setup.sh, in Python so the comparison can give
each measured run its own smtpd port.  Everything lives under `base/postfix/`
(config, queue, log); /etc/postfix and /var/spool/postfix are never read or written
(the packaged master.cf is only copied).  Needs root: Postfix's master starts as
root and its daemons drop to the `postfix` user.

master.cf is the packaged default with chroot off, the port-25 smtpd removed, one
`smtpd` service per port given, and, for the "accept-only" pipeline, no qmgr (so
nothing leaves the incoming queue; `in_flow_delay = 0` then, because smtpd's flow
control waits for tokens that only a running qmgr hands out).  For "discard", every
example.test recipient goes to discard(8): queued, fsynced, taken by qmgr, dropped.
Durability is Postfix's default: cleanup(8) fsyncs each queue file before the 250.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from compare_systems import PIPELINES, START_TIMEOUT, STOP_TIMEOUT, count_files, wait_for_greeting

__all__ = ["PostfixInstance", "postfix_unavailable", "postfix_version"]

TEMPLATE = Path(__file__).with_name("main.cf.in")
MASTER_CF_CANDIDATES = ("/usr/share/postfix/master.cf.dist", "/etc/postfix/master.cf.proto")
SBIN = ("/usr/sbin", "/usr/local/sbin")


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in SBIN:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def postfix_unavailable() -> str | None:
    """Why Postfix cannot be run here (a sentence saying what to do), or None."""
    missing = [name for name in ("postfix", "postconf") if _tool(name) is None]
    if missing:
        return (f"Postfix is not installed ({', '.join(missing)} not found); "
                "install it with `apt-get install postfix`")
    if not any(os.path.exists(path) for path in MASTER_CF_CANDIDATES):
        return "Postfix's packaged master.cf is missing; reinstall the postfix package"
    if os.geteuid() != 0:
        return "Postfix's master must start as root; run bench/compare.py as root to include it"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the postfix user or postdrop group is missing; reinstall the postfix package"
    return None


def postfix_version() -> str:
    postconf = _tool("postconf")
    if postconf is None:
        return "not installed"
    result = subprocess.run([postconf, "-d", "-h", "mail_version"], check=False,
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def _open_to_others(path: Path) -> bool:
    """Whether a non-root user (Postfix's daemons run as `postfix`) can reach `path`."""
    for directory in (path, *path.parents):
        if directory.exists() and not directory.stat().st_mode & 0o001:
            return False
    return True


class PostfixInstance:
    """One Postfix instance under `base/postfix`, smtpd on each of `ports`.

    When `base` is not reachable by other users (pytest's and mkdtemp's directories
    are mode 0700), the instance goes to a temp dir of its own instead, mode 0755,
    which `remove()` deletes."""

    name = "postfix"

    def __init__(self, base: Path, ports: list[int], pipeline: str) -> None:
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
        reason = postfix_unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        self.own_base: Path | None = None
        if not _open_to_others(base):
            self.own_base = base = Path(tempfile.mkdtemp(prefix="fastmta-compare-postfix-"))
            base.chmod(0o755)
        self.base = base
        self.ports = ports
        self.pipeline = pipeline
        self.root = base / "postfix"
        self.etc = self.root / "etc"
        self.spool = self.root / "spool"
        self.log_path = self.root / "maillog"
        self.postfix = _tool("postfix") or "postfix"
        self.postconf = _tool("postconf") or "postconf"
        self._master_pid: int | None = None

    # --- building the instance -----------------------------------------------------------

    def setup(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        for directory in (self.etc, self.spool, self.root / "data", self.root / "mail"):
            directory.mkdir(parents=True)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.root / "mail", nobody.pw_uid, nobody.pw_gid)  # virtual(8) writes as nobody
        os.chown(self.root / "data", pwd.getpwnam("postfix").pw_uid, -1)
        text = TEMPLATE.read_text()
        for key, value in (("@ROOT@", str(self.root)), ("@BASE@", str(self.base)),
                           ("@VUID@", str(nobody.pw_uid)), ("@VGID@", str(nobody.pw_gid))):
            text = text.replace(key, value)
        text += "\n# The pipeline of this comparison (bench/postfix/instance.py).\n"
        if self.pipeline == "discard":
            text += "virtual_transport = discard:benchmark discard\n"
        else:
            text += "in_flow_delay = 0\n"
        (self.etc / "main.cf").write_text(text)
        packaged = next(path for path in MASTER_CF_CANDIDATES if os.path.exists(path))
        shutil.copyfile(packaged, self.etc / "master.cf")
        self._postconf("-M#", "smtp/inet")
        if self.pipeline == "accept-only":
            self._postconf("-M#", "qmgr/unix")
        with open(self.etc / "master.cf", "a") as master_cf:
            master_cf.write("# One smtpd per measured run (bench/compare.py).\n")
            master_cf.writelines(f"127.0.0.1:{port} inet n - n - - smtpd\n" for port in self.ports)
        self._postconf("-F", "*/*/chroot = n")
        self._run(self.postfix, "-c", str(self.etc), "check")

    def _postconf(self, *args: str) -> None:
        self._run(self.postconf, "-c", str(self.etc), *args)

    @staticmethod
    def _run(*args: str) -> None:
        result = subprocess.run(args, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(args)}` failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()}")

    # --- running it --------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._run(self.postfix, "-c", str(self.etc), "start")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log says: {self._log_tail()}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while self._read_master_pid() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix did not write its pid file; see {self.log_path}")
            time.sleep(0.05)
        self._master_pid = self._read_master_pid()
        wait_for_greeting(self.ports[0], START_TIMEOUT, self._master_alive)

    def stop(self) -> None:
        pid = self._master_pid
        if pid is None:
            return
        subprocess.run([self.postfix, "-c", str(self.etc), "stop"], check=False, capture_output=True)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._master_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._master_alive():
            os.kill(pid, 9)  # our own master, by pid; its daemons exit when it is gone
        self._master_pid = None

    def _log_tail(self, lines: int = 3) -> str:
        try:
            return " / ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"nothing ({self.log_path} does not exist)"

    def remove(self) -> None:
        """Delete the temp dir this instance made for itself, if it made one."""
        if self.own_base is not None:
            shutil.rmtree(self.own_base, ignore_errors=True)

    def _read_master_pid(self) -> int | None:
        try:
            text = (self.spool / "pid" / "master.pid").read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def _master_alive(self) -> bool:
        pid = self._master_pid
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                return b") Z" not in handle.read(200)
        except FileNotFoundError:
            return False

    def root_pid(self) -> int:
        assert self._master_pid is not None, "start() first"
        return self._master_pid

    def queue_dirs(self) -> list[Path]:
        return [self.spool / name for name in ("maildrop", "incoming", "active", "deferred")]

    def queued(self) -> int:
        return count_files(self.queue_dirs())

    def fsync_paths(self) -> tuple[str, list[str]]:
        """(prefix of files being received, directories fsynced: none).  cleanup(8)
        writes each queue file in incoming/ and fsyncs it; Postfix never fsyncs a
        directory (it relies on the file system to order the directory entry)."""
        return str(self.spool / "incoming") + "/", []

    def describe(self) -> str:
        transport = ("virtual_transport = discard" if self.pipeline == "discard"
                     else "no qmgr, in_flow_delay = 0")
        return f"Postfix {postfix_version()}, anchors' main.cf + {transport}"
