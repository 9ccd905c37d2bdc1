"""The queue manager of one delivery worker: claim, route, deliver, record, then finish.

Loop (`QueueManager.run`): claim due messages from the spool (new ones in incoming/ and
deferred ones whose retry time has come) until `max_in_flight` are being delivered; while
that limit is reached, each attempt that ends claims the next message itself (no scan of
every attempt under way per message); look again after 50 ms while attempts are under
way, after `queue_scan_interval` when none is.  Several workers (processes) may run over
one spool: the claim is a rename, so each message has exactly one owner.

One attempt of one message (`_attempt`):
1. group the pending recipients by next hop (routes that need no DNS are cached per
   domain) and deliver the groups, concurrently if there are several: local (aliases,
   catch-all, Maildir), discard, error:, or SMTP/LMTP through the worker's `SMTPPool`;
2. record each outcome in the spool as soon as it is known: delivered and deferred
   recipients right away; failed ones after their DSN is queued (so a crash in between
   repeats the attempt, never loses the DSN);
3. recipients still deferred past the queue lifetime fail with 4.4.7; then the message is
   completed (all done) or deferred to `RetrySchedule.next_try` (the file's mtime, so a
   restart keeps it), with one delay warning once it is old enough.
Transient = 4xx, connection failures, timeouts, DNS trouble: retried.  Permanent = 5xx,
unroutable addresses: one DSN to the sender (never for a null sender; a bounce that
cannot be delivered is logged and dropped).

The common case costs no state write: the last group of an attempt to finish, when every
recipient of the attempt was delivered, removes the message instead of recording its
deliveries first (`_Attempt.ends_with`, `_complete_delivered`): the removal is the state
write (a rename into retired/ to be reused, or an unlink; fastmta.spool.recycle).  The
other groups record theirs before the last one may decide so.

Crash safety: every spool update is durable when it returns, so a killed worker redoes at
most the recipients whose outcome it had not recorded yet (one whose peer said 250, or
whose Maildir copy was committed, just before the kill is delivered twice; none is lost).
For a message ended by the removal that window runs from the 250 to the removal, which is
not fsynced (as in Postfix): a killed process loses no removal, and after a power loss the
message may come back whole, its last recipients not recorded, and they get it again,
once (docs/spool.md, "When the delivery worker writes state").  Work that flushes runs in
threads and is never abandoned half-way (`_blocking`, `LocalBatches.run`), so cancelling
an attempt (shutdown) leaves the file in a state the next attempt can trust; a decision
to skip a state write and the removal that replaces it are made in one step (one thread
job, or one run of the event loop without an `await`), so no cancellation falls between.
Unlinks and renames without a flush run on the loop; the release of retired files
(directory fsyncs) runs in a thread, at most one at a time.  The worker holds an flock on
every message it owns and returns the active/ files of dead workers
(`fastmta.delivery.orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
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
from fastmta.delivery.local import LocalBatches, LocalDelivery, LocalJob, Outcome
from fastmta.delivery.maildir import Maildir
from fastmta.delivery.orphans import ORPHAN_MIN_AGE, ORPHAN_SCAN_INTERVAL, hold, recover_orphans
from fastmta.delivery.routing import Route, RouteGroup, Router, Transport
from fastmta.delivery.schedule import RetrySchedule
from fastmta.delivery.smtp import ClientSettings, DeliveryStatus, MessageSource, SMTPPool
from fastmta.policy import RecipientPolicy
from fastmta.spool import ActiveMessage, Spool, SpoolCorruptError, SpoolError
from fastmta.spool.recycle import RELEASE_BATCH

__all__ = ["QueueManager", "recover_orphans"]

log = logging.getLogger("fastmta.delivery")
T = TypeVar("T")

EXPIRED_STATUS = "4.4.7"  # RFC 3463 X.4.7: delivery time expired
STATIC_ROUTE_CACHE = 4096  # domains whose DNS-free route is kept; cleared when full
BUSY_SCAN_INTERVAL = 0.05  # seconds between queue scans while attempts are under way
RELEASE_INTERVAL = 1.0  # seconds between releases of retired files, unless RELEASE_BATCH


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


@dataclass(slots=True)
class _Attempt:
    """One delivery attempt of one claimed message."""

    message: ActiveMessage
    groups_left: int = 0  # next-hop groups whose outcomes are not yet written
    setback: bool = False  # some recipient of this attempt was not delivered
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one spool update at a time
    deciding: threading.Lock = field(default_factory=threading.Lock)  # see ends_with
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

    def ends_with(self, delivered: list[int], outcomes: int) -> bool:
        """Called once per group when its `outcomes` results are known (`delivered` the
        delivered ones).  True if they end the message: every other group has settled
        (its records written) and every recipient of the attempt was delivered; the
        caller then removes the message instead of recording them.  False: the caller
        records its outcomes, then calls `settled()`.  Local groups decide in the batch
        thread, the others on the event loop: hence the lock."""
        with self.deciding:
            if len(delivered) != outcomes:
                self.setback = True
            if self.groups_left == 1 and not self.setback and delivered:
                self.groups_left = 0
                return True
            return False

    def settled(self) -> None:
        """A group that did not end the message has written its delivered records."""
        with self.deciding:
            self.groups_left -= 1


def _complete_delivered(message: ActiveMessage, delivered: list[int]) -> None:
    """Remove a message whose every pending recipient was just delivered, without first
    recording them: the removal is the state write (a crash before it repeats them, the
    window every MTA has between the next hop's 250 and its own record)."""
    try:
        message.complete()
    except SpoolError:
        # Cannot remove it (a failing disk): record the deliveries, so a retry skips them.
        message.mark_delivered(delivered)
        raise


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
        self.local_batches = LocalBatches(self.local)
        self._tasks: set[asyncio.Task[None]] = set()
        self._refilling = False  # at max_in_flight: each attempt that ends claims the next
        self._idle: asyncio.Future[None] | None = None  # resolved when no attempt is left
        self._static_routes: dict[str, Route] = {}  # domain -> a route that needs no DNS
        self._releasing: asyncio.Task[int] | None = None  # retired files on their way to free/
        self._next_release = 0.0  # time.monotonic() after which a scan releases
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
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if time.monotonic() >= next_orphan_scan:
                    _, young = await _blocking(recover_orphans, self.spool)
                    next_orphan_scan = time.monotonic() + (ORPHAN_MIN_AGE if young
                                                           else ORPHAN_SCAN_INTERVAL)
                # While at max_in_flight, attempts that end claim the next messages
                # themselves (_attempt_done); this loop looks for new mail when idle.
                self._refilling = self._claim_due()
                if time.monotonic() >= self._next_release:
                    self._release_retired()
                # While mail flows, look again soon: new mail waits 50 ms, not a whole
                # interval, and is delivered as it comes rather than in bursts that
                # take both cores from the receive workers.
                interval = self.config.queue_scan_interval
                await asyncio.wait({stopping}, timeout=min(interval, BUSY_SCAN_INTERVAL)
                                   if self._tasks else interval)
        finally:
            self._refilling = False
            stopping.cancel()
            await self._drain(drain_timeout)
            await self._release_now()

    async def run_until_idle(self) -> int:
        """Attempt everything due at `clock()`, including mail those attempts queue (DSNs,
        forwards); return how many attempts were made.  For tests and one-shot runs."""
        before = self.attempts
        try:
            while True:
                self._refilling = self._claim_due()
                if not self._tasks:
                    await self._release_now()
                    return self.attempts - before
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
        finally:
            self._refilling = False

    def _claim_due(self) -> bool:
        """Start attempts for due messages; True if it stopped at `max_in_flight`."""
        loop = asyncio.get_running_loop()
        while len(self._tasks) < self.max_in_flight:
            try:
                message = self.spool.claim_next(now=self.clock())
            except SpoolError as exc:
                log.error("cannot claim messages: %s", exc)
                return False
            if message is None:
                return False
            if not hold(message):
                return False  # an orphan scan holds it this instant: look again later
            task = loop.create_task(self._attempt_safely(message))
            self._tasks.add(task)
            task.add_done_callback(self._attempt_done)
        return True

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._refilling:
            self._refilling = self._claim_due()
        if self.spool.pool.pending >= RELEASE_BATCH:
            self._release_retired()
        if not self._tasks and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _release_retired(self) -> None:
        """Pass the files of delivered messages on for reuse (fastmta.spool.recycle), in
        a thread: one release at a time, after RELEASE_BATCH messages or RELEASE_INTERVAL
        (four directory fsyncs each)."""
        if self.spool.pool.pending and (self._releasing is None or self._releasing.done()):
            self._next_release = time.monotonic() + RELEASE_INTERVAL
            self._releasing = asyncio.get_running_loop().create_task(
                _blocking(self.spool.pool.release))

    async def _release_now(self) -> None:
        if self._releasing is not None:
            await asyncio.gather(self._releasing, return_exceptions=True)
        if self.spool.pool.pending:
            await _blocking(self.spool.pool.release)

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
            if not message.closed:  # cancelled, or the defer above failed
                with contextlib.suppress(SpoolError):
                    message.release()

    async def _attempt(self, message: ActiveMessage) -> None:
        attempt = _Attempt(message)
        recipients = message.recipients
        indices_of: dict[str, list[int]] = {}
        for index in message.pending_indices():
            indices_of.setdefault(recipients[index].address, []).append(index)
        if indices_of:
            groups = await self._route_groups(list(indices_of))
            attempt.groups_left = len(groups)
            if len(groups) == 1:
                await self._deliver_group(attempt, groups[0], indices_of)
            else:
                try:
                    # A TaskGroup, not gather: if one group fails, the others are cancelled
                    # and waited for before the message is given up, so none still uses
                    # its file.
                    async with asyncio.TaskGroup() as running:
                        for group in groups:
                            running.create_task(self._deliver_group(attempt, group, indices_of))
                except BaseExceptionGroup as errors:
                    raise errors.exceptions[0] from None
        if not message.closed:  # else every recipient was delivered and the file removed
            await self._finish(attempt)

    async def _route_groups(self, addresses: list[str]) -> list[RouteGroup]:
        """`Router.route_recipients`, with the routes that need no DNS (local, discard,
        error:, a next hop given as an address) kept per domain: the routing table cannot
        change while the worker runs, and the IDNA check of a domain costs more than the
        rest of a discarded message."""
        by_domain: dict[str, list[str]] = {}
        for address in addresses:
            by_domain.setdefault(_domain_of(address), []).append(address)
        known = self._static_routes
        missing = [domain for domain in by_domain if domain not in known]
        looked_up: dict[str, Route] = {}
        if len(missing) == 1:
            looked_up[missing[0]] = await self.router.route(missing[0])
        elif missing:
            routes = await asyncio.gather(*(self.router.route(domain) for domain in missing))
            looked_up = dict(zip(missing, routes, strict=True))
        for domain, route in looked_up.items():
            if route.resolution is None:  # decided by the configuration alone
                if len(known) >= STATIC_ROUTE_CACHE:
                    known.clear()
                known[domain] = route
        groups: dict[tuple[str, object], tuple[Route, list[str]]] = {}
        for domain, members in by_domain.items():
            route = looked_up[domain] if domain in looked_up else known[domain]
            groups.setdefault((route.destination, route.failure), (route, []))[1].extend(members)
        return [RouteGroup(route, tuple(members)) for route, members in groups.values()]

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

        def record(results: list[Outcome]) -> None:
            # Runs in the batch's thread right after the copies are durable: a
            # cancellation cannot fall between a Maildir copy and its record.
            delivered = [index for address, (error, _) in zip(group.recipients, results,
                                                              strict=True)
                         if error is None for index in indices_of[address]]
            if attempt.ends_with(delivered, sum(len(indices_of[a]) for a in group.recipients)):
                _complete_delivered(message, delivered)
            else:
                message.mark_delivered(delivered)
                attempt.settled()

        job = LocalJob(message, [(address, message.recipients[indices_of[address][0]].params)
                                 for address in group.recipients], record)
        async with attempt.lock:
            try:
                await self.local_batches.run(job)
            finally:
                if job.header_block is not None:
                    attempt.header_block = job.header_block
        assert job.outcomes is not None
        outcomes = {index: outcome for address, outcome in zip(group.recipients, job.outcomes,
                                                               strict=True)
                    for index in indices_of[address]}
        delivered = {i: outcome for i, outcome in outcomes.items() if outcome[0] is None}
        for index, (_, detail) in delivered.items():
            self._log(attempt, index, "sent", f"local: {detail}")
        if delivered:
            metrics.delivery_outcome("delivered", len(delivered))
        await self._record(attempt, {i: error for i, (error, _) in outcomes.items()
                                     if error is not None}, group.route, decided=True)

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
                      route: Route, *, detail: str = "", details: dict[int, str] | None = None,
                      decided: bool = False) -> None:
        """Record a group's delivered (None) and deferred outcomes now; keep failures for
        `_finish`.  `decided`: the group called `ends_with` itself (local delivery)."""
        message = attempt.message
        delivered = [index for index, error in outcomes.items() if error is None]
        ends = not decided and attempt.ends_with(delivered, len(outcomes))
        if delivered:
            if ends:
                # No await between this decision and the removal: no cancellation between.
                _complete_delivered(message, delivered)
            else:
                await attempt.update(message.mark_delivered, delivered)
            metrics.delivery_outcome("delivered", len(delivered))
            for index in delivered:
                self._log(attempt, index, "sent", (details or {}).get(index, detail))
        if not decided and not ends:
            attempt.settled()
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
            if attempt.failures:  # a DSN was queued: make the removal durable (one fsync)
                await _blocking(message.complete, True)
            else:
                message.complete()  # a rename or unlink: nothing to wait for, no thread
            return
        if schedule.delay_warning_due(message.arrival, now, is_bounce=is_bounce,
                                      already_warned=message.delay_warned is not None):
            await self._warn_delay(attempt, deferred, now)
        next_try = schedule.next_try(message.arrival, now, is_bounce)
        message.defer(next_try)  # futimens and a rename, not flushed: no thread
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


def _domain_of(address: str) -> str:
    # As Router.route_recipients: rpartition, since a quoted local part may hold "@".
    _, at, domain = address.strip().strip("<>").rpartition("@")
    return domain if at else ""
