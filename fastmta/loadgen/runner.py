"""Runs a load: C concurrent session slots in one uvloop loop, or spread over P processes.

`run_load(spec, on_progress)` is the whole API.  It builds the message and every
command once (`build_plan`), then each slot connects, lets one `Session` send up to
`per_connection` messages, and connects again until the budget of messages is spent,
`--duration` is over, or the slot gave up (`GIVE_UP_AFTER` sessions in a row that
failed before sending anything: connection refused, greeting refused, ...).

Bounds, so a run can never run away:
- The run stops taking new messages at `messages` or at `duration`, whichever first.
- A connection with no reply for `timeout` seconds is aborted (its messages fail).
- After `duration`, messages in flight get `timeout` more seconds, then are aborted.

With `processes` > 1 the parent forks workers before any event loop exists; each runs
C/P slots and N/P messages and sends back a `WorkerResult`; the parent merges them
(histograms add exactly) and shows progress from counters the workers publish in
shared memory twice a second.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import socket
import ssl
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from multiprocessing.sharedctypes import RawArray
from typing import Any

import uvloop

from fastmta.loadgen.body import build_content, build_headers, wire_data
from fastmta.loadgen.session import Envelope, LoadState, Plan, Session
from fastmta.loadgen.stats import Report, WorkerResult

__all__ = ["LoadSpec", "Progress", "build_plan", "recipient_lists", "run_load"]

TICK = 0.5  # seconds between progress updates and stall checks
GIVE_UP_AFTER = 3  # a slot stops after this many sessions in a row that failed at once
_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, and how hard.  `messages=None` means: until `duration`."""

    host: str
    port: int
    connections: int = 1
    messages: int | None = 1000
    size: int = 1024
    per_connection: int = 1
    recipients: int = 1
    pipelining: bool = True
    starttls: bool = False
    processes: int = 1
    duration: float | None = None
    sender: str = "loadgen@example.com"
    to: str = "user{n}@example.test"
    helo: str = "loadgen.example.test"
    timeout: float = 30.0
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("connections", "per_connection", "recipients", "processes", "size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.messages is None and self.duration is None:
            raise ValueError("give --messages or --duration (or both), so the run ends")
        if self.messages is not None and self.messages < self.processes:
            raise ValueError("--messages must be at least --processes (each process sends some)")
        if self.connections < self.processes:
            raise ValueError("--connections must be at least --processes (each process "
                             "runs connections/processes sessions)")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("--duration must be positive (seconds)")
        if self.timeout <= 0:
            raise ValueError("--timeout must be positive (seconds)")
        named = [(self.sender, "--from"), (self.helo, "--helo")]
        named += [(address.strip(), "--to") for address in self.to.split(",")]
        for text, flag in named:
            if not text.isascii() or any(char in text for char in "<>\r\n\t "):
                raise ValueError(f"{flag} must be plain ASCII without spaces or <>, got {text!r}")

    def settings(self) -> dict[str, Any]:
        """The spec as reported in --json (the target as HOST:PORT), with the number of
        connections that will really run at once beside the number asked for."""
        shown = asdict(self)
        host = shown.pop("host")
        shown.pop("port")
        shown.pop("seed")
        return {"target": f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}",
                "connections": shown.pop("connections"),
                "connections_used": self.connections_used, **shown}

    @property
    def connections_used(self) -> int:
        """Sessions that can run at once: a slot reserves `per_connection` messages before
        it connects, so a process with n messages opens at most ceil(n/K) connections, and
        its other slots end at once.  Without --messages the slots keep reconnecting until
        --duration, so every one is used."""
        used = 0
        for part in self.split():
            if part.messages is None:
                return self.connections
            connections_needed = (part.messages + self.per_connection - 1) // self.per_connection
            used += min(part.connections, connections_needed)
        return used

    def unused_connections(self) -> str | None:
        """What to change when fewer than --connections sessions will run at once."""
        used = self.connections_used
        if used >= self.connections:
            return None
        lower = "--per-connection" if self.per_connection > 1 else "--connections"
        return (f"only {used} of {self.connections} connections will be used: "
                f"raise --messages or lower {lower}")

    def split(self) -> list[LoadSpec]:
        """One spec per worker process: connections and messages shared out evenly."""
        count = self.processes
        parts = []
        for index in range(count):
            connections = self.connections // count + (index < self.connections % count)
            messages = None
            if self.messages is not None:
                messages = self.messages // count + (index < self.messages % count)
            parts.append(replace(self, connections=connections, messages=messages, processes=1,
                                 seed=self.seed))
        return parts


@dataclass(frozen=True)
class Progress:
    """A snapshot for the live progress line."""

    done: int
    accepted: int
    failed: int
    errors: int
    elapsed: float
    total: int | None


def recipient_lists(to: str, count: int) -> list[list[str]]:
    """The recipients of successive messages, as a cycle of lists of `count` addresses.

    "user{n}@example.test" gives user1..user<count>; a comma list is used in turn,
    continuing from message to message, so every address gets mail.
    """
    if "{n}" in to:
        return [[to.replace("{n}", str(number)) for number in range(1, count + 1)]]
    addresses = [address.strip() for address in to.split(",") if address.strip()]
    if not addresses:
        raise ValueError("--to needs at least one address")
    cycle = len(addresses) // math.gcd(len(addresses), count)
    return [[addresses[(message * count + index) % len(addresses)] for index in range(count)]
            for message in range(cycle)]


def unverified_tls_context() -> ssl.SSLContext:
    """A test client's context: any certificate, any name (never use this for real mail)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def build_plan(spec: LoadSpec) -> Plan:
    lists = recipient_lists(spec.to, spec.recipients)
    domain = spec.sender.rpartition("@")[2] or "example.com"
    headers = build_headers(
        spec.sender, lists[0][0], email.utils.formatdate(usegmt=True),
        f"loadgen.{int(time.time())}.{os.getpid()}@{domain}",
    )
    content = build_content(spec.size, headers, spec.seed)
    return Plan(
        ehlo=f"EHLO {spec.helo}\r\n".encode("ascii"),
        data=wire_data(content),
        envelopes=tuple(Envelope.build(spec.sender, rcpts, None) for rcpts in lists),
        sized_envelopes=tuple(Envelope.build(spec.sender, rcpts, len(content))
                              for rcpts in lists),
        per_connection=spec.per_connection,
        pipelining=spec.pipelining,
        ssl_context=unverified_tls_context() if spec.starttls else None,
    )


def resolve(host: str, port: int) -> str:
    """The numeric address to connect to, looked up once (not once per connection)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc.strerror}; give an IP address") from exc
    return str(infos[0][4][0])


def run_load(spec: LoadSpec, on_progress: Callable[[Progress], None] | None = None) -> Report:
    """Run the load described by `spec`; `on_progress` is called about twice a second."""
    settings = spec.settings()
    plan = build_plan(spec)  # before forking: workers share it, and errors show once
    spec = replace(spec, host=resolve(spec.host, spec.port))
    if spec.processes == 1:
        results = [run_worker(spec, plan, _single_progress(spec, on_progress))]
    else:
        results = _run_processes(spec, plan, on_progress)
    total = WorkerResult()
    busiest = 0.0
    for result in results:
        total.merge(result)
        wall = max(result.finished - result.started, 1e-9)
        busiest = max(busiest, result.cpu_seconds / wall)
    return Report(settings=settings, total=total, busiest_cpu_share=busiest,
                  processes=spec.processes, cores=os.cpu_count() or 1)


def _errors(result: WorkerResult) -> int:
    return (sum(result.replies.values()) + sum(result.session_errors.values())
            + sum(result.connect_errors.values()))


def _single_progress(spec: LoadSpec, on_progress: Callable[[Progress], None] | None
                     ) -> Callable[[WorkerResult], None] | None:
    if on_progress is None:
        return None

    def tick(result: WorkerResult) -> None:
        on_progress(Progress(result.accepted + result.failed, result.accepted, result.failed,
                             _errors(result), time.monotonic() - result.started, spec.messages))

    return tick


# --- one process ----------------------------------------------------------------------


def run_worker(spec: LoadSpec, plan: Plan,
               on_tick: Callable[[WorkerResult], None] | None = None) -> WorkerResult:
    """Run `spec.connections` slots in a fresh uvloop loop in this thread."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_drive(spec, plan, on_tick))


async def _drive(spec: LoadSpec, plan: Plan,
                 on_tick: Callable[[WorkerResult], None] | None) -> WorkerResult:
    loop = asyncio.get_running_loop()
    state = LoadState(spec.messages)
    result = state.result
    cpu_before = _cpu_seconds()
    result.started = time.monotonic()
    abort_at: list[float] = []

    def out_of_time() -> None:
        if not state.stopping:
            state.stopping = True
            result.stopped_by = "duration"
            abort_at.append(time.monotonic() + spec.timeout)

    if spec.duration is not None:
        loop.call_later(spec.duration, out_of_time)
    slots = {loop.create_task(_run_slot(spec, plan, state)) for _ in range(spec.connections)}
    while slots:
        done, slots = await asyncio.wait(slots, timeout=TICK)
        for task in done:
            task.result()  # a bug in a slot must not pass silently
        now = time.monotonic()
        _abort_stalled(state, now, spec.timeout)
        if abort_at and now >= abort_at[0]:
            for session in list(state.sessions):
                session.fail(f"still busy {spec.timeout:g} s after --duration ended")
        if on_tick is not None:
            on_tick(result)
    result.finished = time.monotonic()
    result.cpu_seconds = _cpu_seconds() - cpu_before
    if not state.stopping and state.remaining > 0:
        result.stopped_by = "errors"
    return result


async def _run_slot(spec: LoadSpec, plan: Plan, state: LoadState) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    failures_in_a_row = 0
    while True:
        reserved = state.reserve(spec.per_connection)
        if not reserved:
            return
        closed: asyncio.Future[None] = loop.create_future()
        session = Session(plan, state, closed, reserved)
        # The stall check cancels a connect that takes longer than `timeout`; no timer
        # per connection (asyncio.timeout would cost a timer and two lookups each).
        state.connecting[session] = task
        try:
            # The factory is called before this await returns, so it sees this session.
            await loop.create_connection(lambda: session, spec.host, spec.port)  # noqa: B023
        except asyncio.CancelledError:
            if not session.connect_timed_out:
                raise
            task.uncancel()
            if session.transport is not None:  # connected just as the time ran out
                session.transport.abort()
            error: str | None = f"connect timed out after {spec.timeout:g} s"
        except OSError as exc:
            error = _describe_connect_error(exc)
        else:
            error = None
        finally:
            del state.connecting[session]
        if error is not None:
            state.remaining += reserved
            state.count(state.result.connect_errors, error)
            failures_in_a_row += 1
        else:
            await closed
            failed_at_once = session.error is not None and not session.started_messages
            failures_in_a_row = failures_in_a_row + 1 if failed_at_once else 0
        if failures_in_a_row >= GIVE_UP_AFTER:
            return
        if failures_in_a_row:
            await asyncio.sleep(0.05 * failures_in_a_row)


def _abort_stalled(state: LoadState, now: float, timeout: float) -> None:
    """Abort connects and sessions with no progress for `timeout` (checked each TICK, so
    the hot path never reads the clock or arms a timer)."""
    for session in list(state.connecting):
        if _stalled(session, now, timeout):
            session.connect_timed_out = True
            state.connecting[session].cancel()
    for session in list(state.sessions):
        if _stalled(session, now, timeout):
            session.fail(f"no reply within {timeout:g} s")


def _stalled(session: Session, now: float, timeout: float) -> bool:
    if session.watched_received != session.received:
        session.watched_received = session.received
        session.watched_since = now
        return False
    return now - session.watched_since >= timeout


def _describe_connect_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _cpu_seconds() -> float:
    usage = resource.getrusage(_RUSAGE)
    return usage.ru_utime + usage.ru_stime


# --- several processes ----------------------------------------------------------------

_FIELDS = 4  # per worker in shared memory: accepted, failed, errors, started


def _run_processes(spec: LoadSpec, plan: Plan,
                   on_progress: Callable[[Progress], None] | None) -> list[WorkerResult]:
    context = multiprocessing.get_context("fork")
    parts = spec.split()
    shared = RawArray("d", len(parts) * _FIELDS)
    go = context.Event()
    workers = []
    for index, part in enumerate(parts):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, name=f"loadgen-worker-{index}",
                                  args=(index, part, plan, shared, go, sender), daemon=True)
        process.start()
        sender.close()
        workers.append((process, receiver))
    started = time.monotonic()
    go.set()
    results: dict[int, WorkerResult] = {}
    pending = {receiver: index for index, (_, receiver) in enumerate(workers)}
    try:
        while pending:
            for ready in multiprocessing.connection.wait(list(pending), timeout=TICK):
                index = pending.pop(ready)  # type: ignore[call-overload]
                results[index] = _receive_result(index, ready)  # type: ignore[arg-type]
            if on_progress is not None:
                on_progress(_shared_progress(shared, len(parts), started, spec.messages))
    finally:
        for process, _ in workers:
            if process.is_alive() and pending:
                process.terminate()
            process.join()
    return [results[index] for index in range(len(parts))]


def _receive_result(index: int, receiver: multiprocessing.connection.Connection
                    ) -> WorkerResult:
    try:
        result, failure = receiver.recv()
    except EOFError:
        raise RuntimeError(f"loadgen worker {index} died without a result "
                           "(killed? out of memory?); see its message above") from None
    if failure is not None:
        raise RuntimeError(f"loadgen worker {index} failed:\n{failure}")
    return result  # type: ignore[no-any-return]


def _shared_progress(shared: Any, workers: int, started: float, total: int | None
                     ) -> Progress:
    accepted = failed = errors = 0
    for index in range(workers):
        base = index * _FIELDS
        accepted += int(shared[base])
        failed += int(shared[base + 1])
        errors += int(shared[base + 2])
    return Progress(accepted + failed, accepted, failed, errors, time.monotonic() - started,
                    total)


def _worker_main(index: int, spec: LoadSpec, plan: Plan, shared: Any, go: Any,
                 sender: multiprocessing.connection.Connection) -> None:
    # Ctrl-C goes to the whole process group; the parent decides and terminates us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    base = index * _FIELDS

    def publish(result: WorkerResult) -> None:
        shared[base] = result.accepted
        shared[base + 1] = result.failed
        shared[base + 2] = _errors(result)

    try:
        go.wait()
        result = run_worker(spec, plan, publish)
        publish(result)
        sender.send((result, None))
    except BaseException:  # noqa: BLE001 - the parent reports it; a worker must not hang it
        sender.send((None, traceback.format_exc()))
    finally:
        sender.close()
