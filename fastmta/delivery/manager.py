"""The queue manager of one delivery worker: claim, route, deliver, record, then finish.

Loop (`QueueManager.run`): claim due messages from the spool (new ones in incoming/ and
deferred ones whose retry time has come) until `max_in_flight` are being delivered, then
claim again as soon as one finishes; when nothing is due, look again after
`queue_scan_interval`.  Several workers (processes) may run over one spool: the claim is a
rename, so each message has exactly one owner.

One attempt of one message (`_attempt`):
1. group the pending recipients by next hop (`Router.route_recipients`) and deliver the
   groups concurrently: local (aliases, catch-all, Maildir), discard, error:, or SMTP/LMTP
   through the worker's `SMTPPool`;
2. record each outcome in the spool as soon as it is known: delivered and deferred
   recipients right away; failed ones after their DSN is queued (so a crash in between
   repeats the attempt, never loses the DSN);
3. recipients still deferred past the queue lifetime fail with 4.4.7; then the message is
   completed (all done) or deferred to `RetrySchedule.next_try` (the file's mtime, so a
   restart keeps it), with one delay warning once it is old enough.
Transient = 4xx, connection failures, timeouts, DNS trouble: retried.  Permanent = 5xx,
unroutable addresses: one DSN to the sender (never for a null sender; a bounce that
cannot be delivered is logged and dropped).

Crash safety: every spool update is durable when it returns, so a killed worker redoes at
most the recipients whose outcome it had not recorded yet (one whose peer said 250 just
before the kill is delivered twice; none is lost).  The worker holds an flock on every
message it owns; `recover_orphans` returns to the queue the active/ files whose owner died
(no lock) while the master lives on, which the master's start-up `Spool.recover()`
cannot do.  Blocking spool and Maildir work runs in threads; a thread's work is never
abandoned half-way (`_blocking`), so cancelling an attempt (shutdown) leaves the file in a
state the next attempt can trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastmta import metrics
from fastmta.aliases import load_aliases
from fastmta.config import Config
from fastmta.delivery.dsn import (
    AttemptError,
    DSNRecipient,
    ReportedMessage,
    bounce_envelope,
    build_dsn,
    notify_wants,
    read_header_block,
    return_full_content,
    should_notify,
)
from fastmta.delivery.maildir import LocalDelivery, Maildir, delivered_to_addresses
from fastmta.delivery.routing import Route, RouteGroup, Router, Transport
from fastmta.delivery.schedule import RetrySchedule
from fastmta.delivery.smtp import ClientSettings, DeliveryStatus, MessageSource, SMTPPool
from fastmta.policy import RecipientPolicy
from fastmta.spool import ActiveMessage, Spool, SpoolCorruptError, SpoolError

__all__ = ["QueueManager", "recover_orphans"]

log = logging.getLogger("fastmta.delivery")
T = TypeVar("T")

ORPHAN_MIN_AGE = 5.0  # seconds since the claim before an unlocked active/ file counts as orphaned
ORPHAN_SCAN_INTERVAL = 60.0
EXPIRED_STATUS = "4.4.7"  # RFC 3463 X.4.7: delivery time expired


def recover_orphans(spool: Spool, now: float | None = None, min_age: float = ORPHAN_MIN_AGE
                    ) -> tuple[int, int]:
    """Return active/ files that no live worker holds to the queue; (returned, too young).

    An owner holds an flock from just after its claim until it lets go, and the kernel
    drops the lock when the owner dies.  A file whose last rename is younger than
    `min_age` may have been claimed a moment ago by a worker not yet holding the lock,
    so it is left for a later scan."""
    moment = time.time() if now is None else now
    returned = young = 0
    try:
        names = os.listdir(spool.active_dir)
    except OSError as exc:
        log.error("cannot list %s to find orphaned messages: %s", spool.active_dir, exc)
        return 0, 0
    for name in sorted(names):
        path = f"{spool.active_dir}/{name}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # finished or moved meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # a live worker owns it
                raise
            info = os.fstat(fd)
            try:
                if os.stat(path).st_ino != info.st_ino:
                    continue  # replaced meanwhile
            except FileNotFoundError:
                continue
            if moment - info.st_ctime < min_age:
                young += 1
                continue
            target = "deferred" if info.st_mtime > moment else "incoming"
            os.rename(path, spool.path(target, name))
            returned += 1
            log.warning("message %s was left in active/ by a delivery worker that died; "
                        "returned to %s/ (recipients already done are not redelivered)",
                        name, target)
        except OSError as exc:
            log.error("cannot return orphaned message %s to the queue: %s", name, exc)
        finally:
            os.close(fd)
    return returned, young


async def _blocking(function: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a thread and always wait for it to end, even when cancelled
    (then re-raise the cancellation): the thread may be writing to the message's file."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(work)
            break
        except asyncio.CancelledError:
            if work.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


@dataclass
class _Attempt:
    """One delivery attempt of one claimed message."""

    message: ActiveMessage
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one spool update at a time
    failures: dict[int, AttemptError] = field(default_factory=dict)  # recorded after the DSN
    expired: dict[int, AttemptError] = field(default_factory=dict)  # their last error, for the DSN
    header_block: bytes | None = None

    async def update(self, function: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        async with self.lock:
            await _blocking(lambda: function(*args, **kwargs))

    async def headers(self) -> bytes:
        if self.header_block is None:
            self.header_block = await _blocking(
                lambda: read_header_block(self.message.iter_body(16384, verify=False)))
        return self.header_block


class QueueManager:
    """Delivers what the spool holds; one per delivery worker process."""

    def __init__(self, config: Config, spool: Spool, *, router: Router | None = None,
                 policy: RecipientPolicy | None = None, pool: SMTPPool | None = None,
                 schedule: RetrySchedule | None = None,
                 clock: Callable[[], float] = time.time, max_in_flight: int = 64) -> None:
        self.config = config
        self.spool = spool
        self.clock = clock
        self.max_in_flight = max_in_flight
        self.router = router if router is not None else Router(config)
        if policy is None:
            aliases = load_aliases(config.aliases_file) if config.aliases_file else None
            policy = RecipientPolicy.from_config(config, aliases)
        self.policy = policy
        self._own_pool = pool is None
        self.pool = pool if pool is not None else SMTPPool(ClientSettings.from_config(config))
        self.schedule = schedule if schedule is not None else RetrySchedule.from_config(config)
        self.local = LocalDelivery(Maildir(config.mail_root, config.hostname), spool,
                                   self.policy.resolve_local, self.policy.is_local,
                                   config.hostname)
        self._tasks: set[asyncio.Task[None]] = set()
        self.attempts = 0  # messages attempted by this manager (for tests and logs)

    async def close(self) -> None:
        if self._own_pool:
            await self.pool.close()

    # --- the loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, drain_timeout: float = 30.0) -> None:
        """Deliver until `stop` is set; then let attempts under way finish for up to
        `drain_timeout` seconds, cancel the rest (their files go back to incoming/ with
        every recorded outcome kept) and return."""
        next_orphan_scan = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= next_orphan_scan:
                    _, young = await _blocking(recover_orphans, self.spool)
                    next_orphan_scan = time.monotonic() + (ORPHAN_MIN_AGE if young
                                                           else ORPHAN_SCAN_INTERVAL)
                full = self._claim_due()
                waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
                if full:
                    waiters |= set(self._tasks)
                _, pending = await asyncio.wait(
                    waiters, timeout=None if full else self.config.queue_scan_interval,
                    return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    if waiter not in self._tasks:
                        waiter.cancel()
        finally:
            await self._drain(drain_timeout)

    async def run_until_idle(self) -> int:
        """Attempt everything due at `clock()`, including mail those attempts queue (DSNs,
        forwards); return how many attempts were made.  For tests and one-shot runs."""
        before = self.attempts
        while True:
            self._claim_due()
            if not self._tasks:
                return self.attempts - before
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    def _claim_due(self) -> bool:
        """Start attempts for due messages; True if it stopped at `max_in_flight`."""
        while len(self._tasks) < self.max_in_flight:
            try:
                message = self.spool.claim_next(now=self.clock())
            except SpoolError as exc:
                log.error("cannot claim messages: %s", exc)
                return False
            if message is None:
                return False
            if not _lock(message):
                return False  # an orphan scan holds it this instant: look again later
            task = asyncio.get_running_loop().create_task(self._attempt_safely(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    async def _drain(self, timeout: float) -> None:
        if not self._tasks:
            return
        log.info("stopping: waiting up to %g s for %d deliveries under way", timeout,
                 len(self._tasks))
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            log.warning("stopping: %d deliveries did not finish in %g s; their messages go back "
                        "to the queue with the outcomes recorded so far", len(late), timeout)
            await asyncio.gather(*late, return_exceptions=True)

    # --- one message -----------------------------------------------------------------

    async def _attempt_safely(self, message: ActiveMessage) -> None:
        self.attempts += 1
        try:
            await self._attempt(message)
        except SpoolCorruptError as exc:
            message.close()
            self.spool.move_to_corrupt(message.path, message.queue_id, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: delivery attempt failed unexpectedly; retrying in %g s",
                          message.queue_id, self.schedule.min_backoff)
            with contextlib.suppress(SpoolError, RuntimeError):
                message.defer(self.clock() + self.schedule.min_backoff)
        finally:
            if _is_open(message):  # cancelled, or the defer above failed
                with contextlib.suppress(SpoolError):
                    message.release()

    async def _attempt(self, message: ActiveMessage) -> None:
        attempt = _Attempt(message)
        recipients = message.recipients
        indices_of: dict[str, list[int]] = {}
        for index in message.pending_indices():
            indices_of.setdefault(recipients[index].address, []).append(index)
        if indices_of:
            groups = await self.router.route_recipients(list(indices_of))
            try:
                # A TaskGroup, not gather: if one group fails, the others are cancelled and
                # waited for before the message is given up, so none still uses its file.
                async with asyncio.TaskGroup() as running:
                    for group in groups:
                        running.create_task(self._deliver_group(attempt, group, indices_of))
            except BaseExceptionGroup as errors:
                raise errors.exceptions[0] from None
        await self._finish(attempt)

    async def _deliver_group(self, attempt: _Attempt, group: RouteGroup,
                             indices_of: dict[str, list[int]]) -> None:
        route = group.route
        if route.failure is not None:
            error = AttemptError(route.failure.status, route.failure.text)
            await self._record(attempt, {index: error for address in group.recipients
                                         for index in indices_of[address]}, route)
        elif route.transport is Transport.DISCARD:
            await self._record(attempt, {index: None for address in group.recipients
                                         for index in indices_of[address]}, route,
                               detail=route.why)
        elif route.transport is Transport.LOCAL:
            await self._deliver_local(attempt, group, indices_of)
        else:
            await self._deliver_remote(attempt, group, indices_of)

    async def _deliver_local(self, attempt: _Attempt, group: RouteGroup,
                             indices_of: dict[str, list[int]]) -> None:
        message = attempt.message
        delivered_to = delivered_to_addresses(await attempt.headers())

        def deliver_all() -> dict[int, tuple[AttemptError | None, str]]:
            outcomes: dict[int, tuple[AttemptError | None, str]] = {}
            already: set[str] = set()
            for address in group.recipients:
                indices = indices_of[address]
                outcome = self.local.deliver(message, address, message.recipients[indices[0]].params,
                                             delivered_to, already)
                for index in indices:
                    outcomes[index] = outcome
            # Recorded in the same thread job: a cancellation cannot fall between a
            # Maildir copy and its record.
            message.mark_delivered([i for i, (error, _) in outcomes.items() if error is None])
            return outcomes

        async with attempt.lock:
            outcomes = await _blocking(deliver_all)
        delivered = {i: outcome for i, outcome in outcomes.items() if outcome[0] is None}
        for index, (_, detail) in delivered.items():
            self._log(attempt, index, "sent", f"local: {detail}")
        if delivered:
            metrics.delivery_outcome("delivered", len(delivered))
        await self._record(attempt, {i: error for i, (error, _) in outcomes.items()
                                     if error is not None}, group.route)

    async def _deliver_remote(self, attempt: _Attempt, group: RouteGroup,
                              indices_of: dict[str, list[int]]) -> None:
        message, route = attempt.message, group.route
        rcpts = [message.recipients[indices_of[address][0]] for address in group.recipients]
        results = await self.pool.deliver(
            route.candidates, message.envelope.sender, rcpts, MessageSource.from_spool(message),
            destination=route.destination, lmtp=route.transport is Transport.LMTP,
            mail_params=message.envelope.mail_params)
        outcomes: dict[int, AttemptError | None] = {}
        details: dict[int, str] = {}
        for address, result in zip(group.recipients, results, strict=True):
            error = None
            if result.status is not DeliveryStatus.DELIVERED:
                error = AttemptError(result.enhanced, result.text,
                                     result.code if result.remote else None, result.host)
            reply = " ".join(result.text.split())
            for index in indices_of[address]:
                outcomes[index] = error
                details[index] = f"relay={result.host}, {result.code} {result.enhanced} {reply}"
        await self._record(attempt, outcomes, route, details=details)

    async def _record(self, attempt: _Attempt, outcomes: dict[int, AttemptError | None],
                      route: Route, *, detail: str = "", details: dict[int, str] | None = None
                      ) -> None:
        """Record delivered (None) and deferred outcomes now; keep failures for `_finish`."""
        message = attempt.message
        delivered = [index for index, error in outcomes.items() if error is None]
        if delivered:
            await attempt.update(message.mark_delivered, delivered)
            metrics.delivery_outcome("delivered", len(delivered))
            for index in delivered:
                self._log(attempt, index, "sent", (details or {}).get(index, detail))
        deferred: dict[tuple[str, str | None], list[int]] = {}
        for index, error in outcomes.items():
            if error is None:
                continue
            if error.permanent:
                attempt.failures[index] = error
            else:
                deferred.setdefault((error.encode(), error.remote), []).append(index)
                self._log(attempt, index, "deferred", error.describe())
        for (text, remote), indices in deferred.items():
            await attempt.update(message.mark_deferred, indices, text, remote=remote,
                                 when=self.clock())

    async def _finish(self, attempt: _Attempt) -> None:
        message, schedule = attempt.message, self.schedule
        envelope = message.envelope
        is_bounce = envelope.sender == ""
        now = self.clock()
        deferred = [i for i in message.pending_indices() if i not in attempt.failures]
        if deferred and schedule.expired(message.arrival, now, is_bounce):
            days = schedule.lifetime(is_bounce) / 86400
            for index in deferred:
                rcpt = message.recipients[index]
                last = AttemptError.parse(rcpt.last_error, rcpt.remote)
                attempt.expired[index] = last
                attempt.failures[index] = AttemptError(
                    EXPIRED_STATUS, f"gave up after {days:g} days in the queue; last error: "
                    f"{last.describe()}", None, rcpt.remote)
            deferred = []
        if attempt.failures:
            await self._fail(attempt, now)
        if not deferred:
            await _blocking(message.complete, bool(attempt.failures))
            return
        if schedule.delay_warning_due(message.arrival, now, is_bounce=is_bounce,
                                      already_warned=message.delay_warned is not None):
            await self._warn_delay(attempt, deferred, now)
        next_try = schedule.next_try(message.arrival, now, is_bounce)
        await _blocking(message.defer, next_try)
        metrics.delivery_outcome("deferred", len(deferred))
        log.info("%s: %d recipients deferred; next try at %s", message.queue_id, len(deferred),
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(next_try)))

    async def _fail(self, attempt: _Attempt, now: float) -> None:
        """Queue the DSN for the failed recipients, then record them as failed."""
        message = attempt.message
        sender = message.envelope.sender
        for index, error in attempt.failures.items():
            self._log(attempt, index, "bounced", error.describe())
        to_report = [i for i in attempt.failures
                     if notify_wants(message.recipients[i].params, "failure")]
        if not should_notify(sender):
            log.warning("%s: a bounce (null sender) could not be delivered to %s; dropped, since "
                        "no one can be told", message.queue_id,
                        ", ".join(message.recipients[i].address for i in attempt.failures))
        elif to_report:
            full = return_full_content(message.envelope.mail_params) and \
                message.body_length <= self.config.max_message_size
            report = []
            for index in to_report:
                rcpt, error = message.recipients[index], attempt.failures[index]
                last = attempt.expired.get(index)
                report.append(DSNRecipient(rcpt.address, rcpt.params, "failed", error.status,
                                           last or error, now,
                                           note=error.describe() if last else None))
            await self._send_dsn(attempt, report, now, full=full)
        by_error: dict[tuple[str, str | None], list[int]] = {}
        for index, error in attempt.failures.items():
            by_error.setdefault((error.encode(), error.remote), []).append(index)
        for (text, remote), indices in by_error.items():
            await attempt.update(message.mark_failed, indices, text, remote=remote, when=now)
        metrics.delivery_outcome("bounced", len(attempt.failures))

    async def _warn_delay(self, attempt: _Attempt, deferred: list[int], now: float) -> None:
        message = attempt.message
        wanted = [i for i in deferred if notify_wants(message.recipients[i].params, "delay")]
        if wanted:
            report = []
            for index in wanted:
                rcpt = message.recipients[index]
                error = AttemptError.parse(rcpt.last_error, rcpt.remote)
                report.append(DSNRecipient(rcpt.address, rcpt.params, "delayed", error.status,
                                           error, rcpt.last_attempt))
            await self._send_dsn(attempt, report, now, full=False, retry_until=self.schedule
                                 .give_up_at(message.arrival, False))
        await attempt.update(message.mark_delay_warned, now)

    async def _send_dsn(self, attempt: _Attempt, recipients: list[DSNRecipient], now: float, *,
                        full: bool, retry_until: float | None = None) -> None:
        message = attempt.message
        envelope = message.envelope
        reported = ReportedMessage(message.queue_id, message.arrival, envelope.sender,
                                   envelope.mail_params, envelope.helo)
        header_block = await attempt.headers()
        hostname = self.config.hostname

        def build_and_queue() -> str:
            content = message.read_body() if full else None
            dsn = build_dsn(reporting_mta=hostname, message=reported, recipients=recipients,
                            header_block=header_block, content=content, now=now,
                            retry_until=retry_until)
            return self.spool.enqueue(bounce_envelope(envelope.sender, hostname, dsn), dsn)

        dsn_id = await _blocking(build_and_queue)
        kind = "delay warning" if retry_until is not None else "non-delivery report"
        log.info("%s: %s %s queued for <%s>", message.queue_id, kind, dsn_id, envelope.sender)

    def _log(self, attempt: _Attempt, index: int, status: str, detail: str) -> None:
        message = attempt.message
        delay = self.clock() - message.arrival
        log.info("%s: to=<%s>, delay=%.1f, status=%s (%s)", message.queue_id,
                 message.recipients[index].address, delay, status, detail)


def _lock(message: ActiveMessage) -> bool:
    """Hold the message's flock while we own it (see recover_orphans); if an orphan scan
    holds it right now, give the message back for later."""
    try:
        fcntl.flock(message.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        with contextlib.suppress(SpoolError):
            message.release()
        return False


def _is_open(message: ActiveMessage) -> bool:
    try:
        message.fileno()
    except RuntimeError:
        return False
    return True
