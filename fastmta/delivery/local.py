"""The local transport: aliases, catch-all, Maildir copies and forwarding, run in batches.

`LocalDelivery` decides, for each local recipient of a message, which mailboxes get a copy
(`RecipientPolicy.resolve_local`: aliases and catch-all) and which remote addresses an
alias forwards to.  Local mailboxes get one Maildir copy each; the remote members of an
alias are forwarded as one new queued message (same sender, `Delivered-To: <alias>` on top,
NOTIFY and ORCPT carried over), as Postfix's local(8) does.  A recipient counts as
delivered only when all its copies are durable (so a retry after one copy failed, e.g.
one mailbox over quota, can repeat the others); two recipients that lead to one mailbox
(an alias and its member) share one copy.

`LocalBatches` runs the local deliveries of every message that asks while the previous
batch works, together on one executor thread: write every copy, then `Maildir.commit`
them all (each file fsynced, each `new/` fsynced once per batch, not per message), then
per message the forwards and the caller's spool update (`LocalJob.record`), then wake the
waiters.  One thread hand-off per batch instead of two per message, and the directory
flushes shared by every delivery of the batch.  A job is never abandoned half-way: a
cancelled waiter still waits for its batch to end, so the spool update that follows a
copy is never skipped by a shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from fastmta.delivery.dsn import AttemptError, read_header_block, xtext_encode
from fastmta.delivery.maildir import (
    Maildir,
    MaildirCopy,
    MaildirError,
    delivered_to_addresses,
)
from fastmta.protocol.address import split_mailbox
from fastmta.spool import Envelope, MessageFile, Recipient, Spool

__all__ = ["LocalBatches", "LocalDelivery", "LocalJob", "Outcome"]

Outcome = tuple[AttemptError | None, str]  # (None, what was done) or (the error, "")
MAX_OPEN_COPIES = 128  # copies written but not committed yet (each holds a descriptor)
_FORWARDED_MAIL_PARAMS = ("BODY", "SMTPUTF8", "RET", "ENVID")


@dataclass(slots=True)
class _Plan:
    """What one recipient needs: its copies (own or shared), forwards, or an error."""

    address: str
    params: dict[str, str | None]
    error: AttemptError | None = None
    copies: list[MaildirCopy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)


class LocalDelivery:
    """Local delivery for one worker.  Blocking, and for one thread at a time (LocalBatches
    sees to that).  `resolve(address)` is RecipientPolicy.resolve_local, `is_local(domain)`
    RecipientPolicy.is_local."""

    def __init__(self, maildir: Maildir, spool: Spool, resolve: Callable[[str], list[str]],
                 is_local: Callable[[str], bool], hostname: str) -> None:
        self.maildir = maildir
        self.spool = spool
        self.resolve = resolve
        self.is_local = is_local
        self.hostname = hostname
        self._uncommitted: list[MaildirCopy] = []

    def deliver_all(self, message: MessageFile, recipients: Sequence[tuple[str, dict[str, str | None]]],
                    delivered_to: frozenset[str]) -> list[Outcome]:
        """Deliver local recipients (address, RCPT parameters) of one message; one outcome
        each, in order."""
        plans = self.prepare(message, recipients, delivered_to)
        self.flush()
        return self.conclude(message, plans)

    def prepare(self, message: MessageFile, recipients: Sequence[tuple[str, dict[str, str | None]]],
                delivered_to: frozenset[str]) -> list[_Plan]:
        """Write the copies the recipients need (not yet durable: `flush()`, then
        `conclude()`).  What the message's content raises (a damaged spool file) passes
        through; the copies written until then are still committed by the next flush."""
        already: dict[str, MaildirCopy] = {}  # mailbox (lower-cased) -> its copy
        plans = []
        for address, params in recipients:
            plan = _Plan(address, params)
            plans.append(plan)
            targets = self.resolve(address)
            if not targets:
                plan.error = AttemptError("5.1.1", f"no mailbox for {address} here (the user or "
                                          "alias was removed after the message was accepted)")
                continue
            for target in targets:
                domain = split_mailbox(target)[1]
                if target != address and domain and not self.is_local(domain):
                    plan.remote.append(target)
                    continue
                copy = already.get(target.lower())
                if copy is not None:
                    plan.copies.append(copy)
                    plan.notes.append(f"{target} already has a copy")
                    continue
                try:
                    copy = self.maildir.write(target, message.envelope.sender,
                                              lambda: message.iter_body(verify=True),
                                              delivered_to=delivered_to)
                except MaildirError as exc:
                    plan.error = AttemptError(exc.status, exc.text)
                    break
                self._uncommitted.append(copy)
                if len(self._uncommitted) >= MAX_OPEN_COPIES:
                    self.flush()
                already[target.lower()] = copy
                plan.copies.append(copy)
                plan.notes.append(f"maildir {copy.mailbox}")
            if plan.remote and plan.error is None and address.lower() in delivered_to:
                plan.error = AttemptError("5.4.6", f"mail forwarding loop for {address}: the "
                                          "message already passed this alias (Delivered-To); "
                                          "check the aliases")
        return plans

    def flush(self) -> None:
        """Commit every copy written so far (see Maildir.commit)."""
        copies, self._uncommitted = self._uncommitted, []
        self.maildir.commit(copies)

    def abandon(self) -> None:
        """Drop the copies written so far without committing them."""
        copies, self._uncommitted = self._uncommitted, []
        self.maildir.discard(copies)

    def conclude(self, message: MessageFile, plans: list[_Plan]) -> list[Outcome]:
        """After `flush()`: each recipient's outcome; forwards are queued for those whose
        copies all became durable."""
        outcomes: list[Outcome] = []
        for plan in plans:
            lost = next((copy for copy in plan.copies if not copy.committed), None)
            if plan.error is not None:
                outcomes.append((plan.error, ""))
            elif lost is not None:
                failed = lost.error or MaildirError("4.3.0", f"the copy for {lost.address} was "
                                                    "not committed; it will be retried")
                outcomes.append((AttemptError(failed.status, failed.text), ""))
            else:
                if plan.remote:
                    queue_id = self._forward(message, plan.address, plan.params, plan.remote)
                    plan.notes.append(f"forwarded as {queue_id} to {', '.join(plan.remote)}")
                outcomes.append((None, "; ".join(plan.notes)))
        return outcomes

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


@dataclass(slots=True)
class LocalJob:
    """The local recipients of one message, for one batch.  `record(outcomes)` runs in the
    batch's thread right after the outcomes are known (the spool update)."""

    message: MessageFile
    recipients: list[tuple[str, dict[str, str | None]]]
    record: Callable[[list[Outcome]], None]
    header_block: bytes | None = None  # the message's header section, read for the loop check
    outcomes: list[Outcome] | None = None
    error: BaseException | None = None  # what the job raised; the waiter re-raises it


class LocalBatches:
    """Runs LocalJobs in batches on the event loop's default executor, one batch at a time."""

    def __init__(self, local: LocalDelivery) -> None:
        self.local = local
        self._waiting: list[tuple[LocalJob, asyncio.Future[None]]] = []
        self._running = False  # a batch is in the executor
        self._starting = False  # a start is scheduled for the jobs of this loop iteration
        self.batches = 0  # for tests and measurements

    async def run(self, job: LocalJob) -> None:
        """Run `job` in the next batch; re-raise what it raised.  Cancelling the caller
        waits for the job to end first (then raises CancelledError)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._waiting.append((job, done))
        if not self._running and not self._starting:
            # Not at once: the attempts that reach this point in the same iteration of
            # the loop (all claimed together) go into the same batch.
            self._starting = True
            loop.call_soon(self._start)
        cancelled = False
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        if job.error is not None:
            raise job.error

    def _start(self) -> None:
        self._starting = False
        if self._running or not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        self._running = True
        self.batches += 1
        running = asyncio.get_running_loop().run_in_executor(
            None, self._run_batch, [job for job, _ in batch])
        running.add_done_callback(lambda finished: self._finished(batch, finished))

    def _finished(self, batch: list[tuple[LocalJob, asyncio.Future[None]]],
                  finished: asyncio.Future[None]) -> None:
        self._running = False
        failure = finished.exception() if not finished.cancelled() else asyncio.CancelledError()
        for job, done in batch:
            if failure is not None and job.error is None and job.outcomes is None:
                job.error = failure
            if not done.done():
                done.set_result(None)
        self._start()  # what gathered meanwhile

    def _run_batch(self, jobs: list[LocalJob]) -> None:
        local = self.local
        prepared = []
        try:
            for job in jobs:
                try:
                    job.header_block = read_header_block(job.message.iter_body(16384, verify=False))
                    plans = local.prepare(job.message, job.recipients,
                                          delivered_to_addresses(job.header_block))
                except Exception as exc:  # noqa: BLE001 - handed to the job's waiter
                    job.error = exc
                    continue
                prepared.append((job, plans))
            local.flush()
        except BaseException:
            local.abandon()
            raise
        for job, plans in prepared:
            try:
                job.outcomes = local.conclude(job.message, plans)
                job.record(job.outcomes)
            except Exception as exc:  # noqa: BLE001 - handed to the job's waiter
                job.error = exc


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
