"""The master's loop: start, watch, replace, reload and stop the worker processes.

The loop is `selectors` plus a signal wakeup pipe, single-threaded, because the
master forks (a thread holding a lock at fork time would leave it locked in the
child).  Signal handlers only record the signal; the loop acts on it.

Invariants:
- The master keeps the listening sockets open from start to stop, so connections
  arriving while workers are replaced wait in the listen queue instead of being
  refused.  On stop it closes them at once, and so does every worker.
- A worker that dies is replaced at once; one that dies again within
  `STARTUP_GRACE` seconds of starting is restarted after an exponential back-off
  (`restart_delay`), never in a hot loop.
- Reload (SIGHUP): new workers start with the new config; only when every new
  receive worker says it is serving are the old ones told to drain (SIGTERM).  If a
  new worker dies first, or is not serving within `READY_TIMEOUT`, the new ones are
  stopped and the old ones keep serving.
- Stop (SIGTERM/SIGINT): every worker gets SIGTERM and drains; one still running
  `drain_timeout + KILL_GRACE` seconds later gets SIGKILL (its acknowledged messages
  are safe in the spool either way).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastmta.config import Config
from fastmta.process.children import run_child
from fastmta.process.metrics_http import MetricsServer, WorkerStatus
from fastmta.process.privileges import Identity

log = logging.getLogger("fastmta.master")

STARTUP_GRACE = 10.0  # a worker dying sooner than this after its start counts as failing to start
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
READY_TIMEOUT = 20.0  # new receive workers must be serving within this on reload
KILL_GRACE = 10.0  # beyond drain_timeout, before SIGKILL
TICK = 1.0


def restart_delay(failures: int) -> float:
    """Seconds before restarting a worker after `failures` deaths in a row at start-up.

    The first death is answered at once; then 0.5 s, 1 s, 2 s, ... up to 30 s."""
    if failures <= 1:
        return 0.0
    return min(FIRST_BACKOFF * 2 ** (failures - 2), MAX_BACKOFF)


def socket_name(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


@dataclass(eq=False)
class Slot:
    """A place for one worker; survives the worker's replacement (keeps the counts)."""

    role: str  # "receive" or "delivery"
    index: int
    child: Child | None = None
    failures: int = 0  # deaths in a row within STARTUP_GRACE of starting
    restart_at: float | None = None
    restarts: int = 0

    @property
    def name(self) -> str:
        return f"{self.role}.{self.index}"


@dataclass(eq=False)
class Child:
    pid: int
    slot: Slot
    started: float
    ready_fd: int | None
    ready: bool = False
    retiring: bool = False  # told to drain: not replaced when it exits
    kill_at: float | None = None


@dataclass(eq=False)
class Reload:
    config: Config
    tls_context: ssl.SSLContext | None
    slots: list[Slot] = field(default_factory=list)
    deadline: float = 0.0


class Supervisor:
    def __init__(self, config: Config, sockets: list[socket.socket], *,
                 tls_context: ssl.SSLContext | None, identity: Identity | None,
                 reload_config: Callable[[Config], tuple[Config, ssl.SSLContext | None]],
                 metrics_socket: socket.socket | None = None,
                 render_metrics: Callable[[Callable[[], list[WorkerStatus]]], Callable[[], bytes]]
                 | None = None,
                 on_worker_exit: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.sockets = sockets
        self.tls_context = tls_context
        self.identity = identity
        self.reload_config = reload_config
        self.on_worker_exit = on_worker_exit
        self.pid = os.getpid()
        self.listen_names = [socket_name(sock) for sock in sockets]
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, Child] = {}
        self.slots: list[Slot] = []
        self.reload: Reload | None = None
        self.stopping = False
        self.unclean = 0  # workers that failed to stop cleanly (killed, or an error status)
        self.announced = False
        self._signals: list[int] = []
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._drain_wakeup)
        self.metrics: MetricsServer | None = None
        if metrics_socket is not None and render_metrics is not None:
            self.metrics = MetricsServer(metrics_socket, self.selector,
                                         render_metrics(self.worker_status))

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; the exit status: 0 when every worker stopped cleanly."""
        previous = {signum: signal.signal(signum, self._record_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)}
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        try:
            self.slots = self._make_slots(self.config)
            for slot in self.slots:
                self._spawn(slot, self.config, self.tls_context)
            while self.children or not self.stopping:
                self._step()
        except BaseException:
            log.critical("master failed; stopping every worker", exc_info=True)
            self._emergency_stop()
            return 1
        finally:
            signal.set_wakeup_fd(-1)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._close()
        return 0 if self.unclean == 0 else 1

    def _step(self) -> None:
        for key, mask in self.selector.select(self._timeout()):
            key.data(mask)
        while self._signals:
            self._act_on(self._signals.pop(0))
        self._reap()
        now = time.monotonic()
        if not self.stopping:
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    slot.restart_at = None
                    self._spawn(slot, self.config, self.tls_context)
            self._check_reload(now)
        for child in list(self.children.values()):
            if child.kill_at is not None and child.kill_at <= now:
                log.error("%s (pid %d) is still running %gs after SIGTERM; killing it",
                          child.slot.name, child.pid, self.config.drain_timeout + KILL_GRACE)
                self._kill(child, signal.SIGKILL)
                child.kill_at = None
        if self.metrics is not None:
            self.metrics.expire(now)

    def _timeout(self) -> float:
        now = time.monotonic()
        moments = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        moments += [child.kill_at for child in self.children.values() if child.kill_at is not None]
        if self.reload is not None:
            moments.append(self.reload.deadline)
        return max(0.0, min([TICK, *(moment - now for moment in moments)]))

    def _record_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _drain_wakeup(self, _mask: int) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _act_on(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # _reap runs on every step
        if signum == signal.SIGHUP:
            if self.stopping:
                log.info("SIGHUP ignored: stopping")
            else:
                self._begin_reload()
            return
        name = signal.Signals(signum).name
        if self.stopping:
            log.info("%s: already stopping, %d workers still draining", name, len(self.children))
            return
        self._begin_stop(name)

    # --- workers -------------------------------------------------------------------------

    @staticmethod
    def _make_slots(config: Config) -> list[Slot]:
        return ([Slot("receive", index) for index in range(config.workers)]
                + [Slot("delivery", index) for index in range(config.delivery_workers)])

    def _spawn(self, slot: Slot, config: Config,
               tls_context: ssl.SSLContext | None) -> Child | None:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(ready_r)
            os.close(ready_w)
            log.error("cannot start %s: fork failed: %s; trying again in %gs", slot.name,
                      exc.strerror, MAX_BACKOFF)
            slot.restart_at = time.monotonic() + MAX_BACKOFF
            return None
        if pid == 0:  # the child
            os.close(ready_r)
            run_child(slot.role, slot.index, config, self.sockets, tls_context, self.identity,
                      self._close_in_child, ready_w, self.pid)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        child = Child(pid, slot, time.monotonic(), ready_r)
        self.children[pid] = child
        slot.child = child
        self.selector.register(ready_r, selectors.EVENT_READ, lambda mask: self._on_ready(child))
        log.info("started %s (pid %d)", slot.name, pid)
        return child

    def _close_in_child(self) -> None:
        """Close, in a new child, everything that belongs to the master.

        Never unregister from the selector here: the epoll instance is shared with the
        master across fork, so that would change the master's."""
        if self.metrics is not None:
            self.metrics.close_in_child()
        for child in self.children.values():
            if child.ready_fd is not None:
                os.close(child.ready_fd)
        self.selector.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def _on_ready(self, child: Child) -> None:
        try:
            data = os.read(child.ready_fd, 16) if child.ready_fd is not None else b""
        except (BlockingIOError, InterruptedError):
            return
        self._close_ready_fd(child)
        if data:
            child.ready = True
            if not self.announced and all(slot.child is not None and slot.child.ready
                                          for slot in self.slots if slot.role == "receive"):
                self.announced = True
                log.info("fastmta ready: %d receive workers on %s, %d delivery workers",
                         self.config.workers, ", ".join(self.listen_names),
                         self.config.delivery_workers)

    def _close_ready_fd(self, child: Child) -> None:
        if child.ready_fd is not None:
            self.selector.unregister(child.ready_fd)
            os.close(child.ready_fd)
            child.ready_fd = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self._exited(child, status)

    def _exited(self, child: Child, status: int) -> None:
        self._close_ready_fd(child)
        if self.on_worker_exit is not None:
            self.on_worker_exit(child.pid)
        slot = child.slot
        if slot.child is child:
            slot.child = None
        how = describe_status(status)
        if child.retiring:
            clean = os.waitstatus_to_exitcode(status) in (0, -signal.SIGTERM)
            if self.stopping and not clean:
                self.unclean += 1
            (log.info if clean else log.warning)("%s (pid %d) %s after draining", slot.name,
                                                 child.pid, how)
            return
        if self.reload is not None and slot in self.reload.slots:
            self._abort_reload(f"the new {slot.name} (pid {child.pid}) {how} before it was "
                               "serving")
            return
        now = time.monotonic()
        slot.restarts += 1
        slot.failures = slot.failures + 1 if now - child.started < STARTUP_GRACE else 1
        delay = restart_delay(slot.failures)
        if delay == 0:
            log.error("%s (pid %d) %s; starting a new one", slot.name, child.pid, how)
            self._spawn(slot, self.config, self.tls_context)
        else:
            log.error("%s (pid %d) %s, the %d. time in a row within %gs of its start; backing "
                      "off: next start in %gs (see its errors above)", slot.name, child.pid, how,
                      slot.failures, STARTUP_GRACE, delay)
            slot.restart_at = now + delay

    def _retire(self, child: Child, signum: int = signal.SIGTERM) -> None:
        """Tell a worker to drain and exit; it is not replaced."""
        if child.retiring:
            return
        child.retiring = True
        child.kill_at = time.monotonic() + self.config.drain_timeout + KILL_GRACE
        self._kill(child, signum)

    @staticmethod
    def _kill(child: Child, signum: int) -> None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass  # already gone: reaped on the next step

    # --- reload --------------------------------------------------------------------------

    def _begin_reload(self) -> None:
        if self.reload is not None:
            log.warning("SIGHUP: a reload is already under way; send it again when it is done")
            return
        log.info("SIGHUP: reloading the configuration")
        try:
            config, tls_context = self.reload_config(self.config)
        except Exception as exc:  # noqa: BLE001 (any failure: log it, keep serving)
            log.error("reload failed, keeping the running workers: %s", exc)
            return
        reload = Reload(config, tls_context, self._make_slots(config),
                        time.monotonic() + READY_TIMEOUT)
        self.reload = reload
        for slot in reload.slots:
            if self._spawn(slot, config, tls_context) is None:
                self._abort_reload(f"cannot start the new {slot.name}")
                return
        self._check_reload(time.monotonic())

    def _check_reload(self, now: float) -> None:
        reload = self.reload
        if reload is None:
            return
        waiting = [slot for slot in reload.slots if slot.child is None or not slot.child.ready]
        if waiting:
            if now >= reload.deadline:
                self._abort_reload(f"{', '.join(s.name for s in waiting)} not serving "
                                   f"{READY_TIMEOUT:g}s after the start")
            return
        old = [slot.child for slot in self.slots if slot.child is not None]
        for slot in self.slots:
            slot.restart_at = None
        for child in old:
            self._retire(child)
        # The counts (restarts) follow the slot position, so the metrics keep their series.
        for new_slot in reload.slots:
            for old_slot in self.slots:
                if (old_slot.role, old_slot.index) == (new_slot.role, new_slot.index):
                    new_slot.restarts = old_slot.restarts
        self.slots = reload.slots
        self.config = reload.config
        self.tls_context = reload.tls_context
        self.reload = None
        log.info("reload done: %d receive and %d delivery workers serving the new "
                 "configuration; %d old workers draining", self.config.workers,
                 self.config.delivery_workers, len(old))

    def _abort_reload(self, why: str) -> None:
        reload = self.reload
        if reload is None:
            return
        self.reload = None
        for slot in reload.slots:
            if slot.child is not None:
                self._retire(slot.child)
        log.error("reload failed: %s; the running workers keep serving the old configuration "
                  "(see the errors above, fix them, then send SIGHUP again)", why)

    # --- stopping ------------------------------------------------------------------------

    def _begin_stop(self, signame: str) -> None:
        self.stopping = True
        log.info("%s: stopping; open sessions may finish within %gs", signame,
                 self.config.drain_timeout)
        if self.reload is not None:
            self._abort_reload("stopping")
        for slot in self.slots:
            slot.restart_at = None
        for child in list(self.children.values()):
            self._retire(child)
        # Stop accepting at once: the workers close their copies too, so new
        # connections are refused from now on instead of waiting in the queue.
        for sock in self.sockets:
            sock.close()

    def _emergency_stop(self) -> None:
        for child in self.children.values():
            self._kill(child, signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + KILL_GRACE
        while self.children and time.monotonic() < deadline:
            try:
                pid, _status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)
        for child in self.children.values():
            self._kill(child, signal.SIGKILL)

    def _close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.selector.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    # --- status for metrics --------------------------------------------------------------

    def worker_status(self) -> list[WorkerStatus]:
        return [WorkerStatus(slot.role, slot.index, slot.child is not None, slot.restarts)
                for slot in self.slots]
