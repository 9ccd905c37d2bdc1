"""What a worker process does between fork() and its entry point, and how it ends.

Order matters (each step says why):
1. Stop the master's signal plumbing: the wakeup pipe belongs to the master, and its
   handlers only record signals for the master's loop.
2. Close what only the master uses (its selector, pipes, the metrics socket), through
   their Python objects so nothing closes a recycled descriptor number later.
3. Name the process (`ps` shows fastmta-receive / fastmta-deliver) and the log role.
4. Drop privileges, then ask for SIGTERM when the master dies (the kernel forgets
   that request on a change of user, so it comes after).
5. Run the entry point; whatever happens, flush metrics and leave with os._exit, so
   the master's cleanup (pid file, atexit handlers) never runs in a child.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import NoReturn

from fastmta import metrics
from fastmta.config import Config
from fastmta.process.logsetup import set_role
from fastmta.process.osutil import exit_with_parent, set_process_name
from fastmta.process.privileges import Identity, PrivilegeError, drop_privileges

# Imported here, in the master, so every forked worker shares the loaded modules.
from fastmta.server.worker import run_receive_worker

log = logging.getLogger("fastmta.master")

PROCESS_NAMES = {"receive": "fastmta-receive", "delivery": "fastmta-deliver"}


def run_child(role: str, slot: int, config: Config, sockets: list[socket.socket],
              tls_context: ssl.SSLContext | None, identity: Identity | None,
              close_master_resources: Callable[[], None], ready_fd: int | None,
              master_pid: int) -> NoReturn:
    """The body of a forked worker; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        # The master turns Ctrl-C into SIGTERM for every worker; the workers ignore
        # SIGINT themselves (a receive worker run on its own still drains on it).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the master replaces workers instead
        close_master_resources()
        set_role(f"{role}.{slot}")
        set_process_name(PROCESS_NAMES[role])
        if identity is not None:
            drop_privileges(identity)
        exit_with_parent(master_pid)
        if role == "receive":
            code = _receive(config, sockets, tls_context, ready_fd)
        else:
            for sock in sockets:
                sock.close()  # a delivery worker never accepts
            code = _delivery(config, ready_fd)
    except PrivilegeError as exc:
        log.error("cannot start: %s", exc)
    except (OSError, ValueError) as exc:  # e.g. spool or aliases file unreadable as --user
        log.error("cannot start: %s; fix it, then `kill -HUP` the master (pid %d)", exc,
                  master_pid)
    except BaseException:
        log.exception("worker failed")
    finally:
        try:
            metrics.flush()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _signal_ready(ready_fd: int | None) -> Callable[[], None]:
    def ready() -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"R")
                os.close(ready_fd)
            except OSError:
                pass

    return ready


def _receive(config: Config, sockets: list[socket.socket], tls_context: ssl.SSLContext | None,
             ready_fd: int | None) -> int:
    return run_receive_worker(config, sockets, tls_context=tls_context,
                              on_ready=_signal_ready(ready_fd))


def _delivery(config: Config, ready_fd: int | None) -> int:
    """Call the delivery side's process entry (fastmta.delivery.worker)."""
    from fastmta.delivery.worker import run_delivery_worker

    _signal_ready(ready_fd)()  # nothing to wait for: it claims work as soon as it runs
    result = run_delivery_worker(config)
    return int(result or 0)
