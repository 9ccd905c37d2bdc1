"""Outbound SMTP/LMTP over asyncio: connect, fall back, time out, STARTTLS, reuse connections.

Drives the sans-IO `fastmta.protocol.client.ClientConnection` over sockets of the
running loop (uvloop in delivery workers, stock asyncio elsewhere: only the public
loop API is used).  `SMTPPool.deliver()` sends one message to one destination and
returns one `RecipientResult` per recipient, in order; the queue manager records
them (`mark_delivered`, `mark_deferred(error=result.describe(), remote=...)`).

Fallback (RFC 5321 5.1, 3.1): candidates are tried in order; a refused or timed-out
connection, a greeting other than 220 (554 included), a refused EHLO/HELO, a 421 or
a lost connection before the data went out all move the undecided recipients on to
the next candidate.  Replies to MAIL, RCPT and DATA decide recipients where they
are given.  A failed TLS handshake is retried once on the same address without
STARTTLS (opportunistic TLS, RFC 3207 4; certificates are not checked).

Invariants:
- No wait exceeds the RFC 5321 4.5.3.2 timeout of its stage (`Timeouts`, scalable).
- Connections per destination (busy plus idle) never exceed `destination_concurrency`
  per pool; a delivery worker process has one pool.
- A message whose end of data went unanswered is not offered to another candidate:
  it may have been accepted, and the queue's later retry risks a duplicate rather
  than a loss (RFC 5321 4.5.3.2.6, 6.1).
- If reading the content fails (SpoolCorruptError, OSError), the connection is
  dropped before the final "." so the peer discards the partial message, and the
  error propagates.
- Content is read in `chunk_size` pieces with back-pressure from the socket; only a
  message that must be downgraded to 7 bits is held whole in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import os
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, Self

from fastmta.mime.downgrade import DowngradeError, downgrade_8bit, needs_downgrade
from fastmta.protocol.client import (
    ClientConnection,
    ClientEvent,
    ClientState,
    Closed,
    Direction,
    Ready,
    RecipientOutcome,
    SendContent,
    SessionFailed,
    Stage,
    Transaction,
    TransactionDone,
    Transcript,
    UpgradeTLS,
)
from fastmta.protocol.replies import Reply

if TYPE_CHECKING:
    from fastmta.config import Config

__all__ = ["ClientSettings", "DeliveryStatus", "MessageSource", "RecipientResult", "SMTPPool",
           "Timeouts", "deliver"]


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait at each stage; RFC 5321 4.5.3.2 gives the defaults it names."""

    connect: float = 30.0
    greeting: float = 300.0  # 4.5.3.2.1
    hello: float = 300.0  # EHLO/HELO/STARTTLS/RSET: not in 4.5.3.2; as MAIL
    tls_handshake: float = 60.0
    mail: float = 300.0  # 4.5.3.2.2
    rcpt: float = 300.0  # 4.5.3.2.3
    data_init: float = 120.0  # 4.5.3.2.4
    data_block: float = 180.0  # 4.5.3.2.5: each write of content
    data_end: float = 600.0  # 4.5.3.2.6
    quit: float = 30.0

    def scaled(self, factor: float) -> Timeouts:
        """Every timeout times `factor` (tests use small factors)."""
        return Timeouts(**{name: value * factor for name, value in vars(self).items()})

    def for_stage(self, stage: Stage | None) -> float:
        return {Stage.GREETING: self.greeting, Stage.MAIL: self.mail, Stage.RCPT: self.rcpt,
                Stage.DATA: self.data_init, Stage.END_OF_DATA: self.data_end,
                Stage.QUIT: self.quit}.get(stage, self.hello)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClientSettings:
    hostname: str  # our EHLO name
    timeouts: Timeouts = field(default_factory=Timeouts)
    starttls: bool = True  # opportunistic STARTTLS when offered
    tls_context: ssl.SSLContext | None = None  # default: no certificate checks
    destination_concurrency: int = 20
    max_messages_per_session: int = 100
    session_idle_time: float = 5.0  # an idle connection waits this long for the next message
    max_recipients_per_transaction: int = 100  # RFC 5321 4.5.3.1.8: every server takes 100
    chunk_size: int = 65536

    @classmethod
    def from_config(cls, config: Config, **changes: Any) -> ClientSettings:
        settings = cls(hostname=config.hostname,
                       timeouts=Timeouts(connect=config.connect_timeout),
                       starttls=config.outbound_tls == "opportunistic",
                       destination_concurrency=config.destination_concurrency)
        return replace(settings, **changes)


class DeliveryStatus(enum.StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"  # try again later
    PERMANENT = "permanent"  # bounce


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What happened to one recipient in this attempt."""

    recipient: str
    status: DeliveryStatus
    code: int | None  # reply code (the peer's, or ours for a check before sending)
    enhanced: str  # RFC 3463 status, always set
    text: str
    host: str | None  # "name[ip]:port" that answered, or was tried last; None if none was
    stage: str  # what the reply answered: "RCPT TO", "end of DATA", "greeting", "connect"...
    remote: bool  # code and text are the peer's own reply (DSN Diagnostic-Code)

    def describe(self) -> str:
        """One line for logs, the queue listing and DSNs, in the Postfix manner."""
        text = " ".join(self.text.split("\n"))
        if self.remote and self.code is not None:
            return (f"host {self.host} said: {self.code} {self.enhanced} {text} "
                    f"(in reply to {self.stage})")
        return text


class _SpoolMessage(Protocol):
    @property
    def body_length(self) -> int: ...

    def iter_body(self, chunk_size: int = ..., verify: bool = ...) -> Iterator[bytes]: ...


class MessageSource:
    """The content to send: bytes in memory, or `length` bytes of a file from `offset`."""

    def __init__(self, size: int, chunks: Callable[[int], Iterator[bytes]],
                 content: bytes | None = None) -> None:
        self.size = size  # octets (RFC 1870 5: what SIZE= declares)
        self._chunks = chunks  # chunks(size) -> a fresh iterator over the content
        self._content = content
        self._eight_bit: bool | None = None

    @classmethod
    def from_bytes(cls, content: bytes) -> MessageSource:
        view = memoryview(content)
        return cls(len(content), lambda size: (view[i:i + size].tobytes()
                                               for i in range(0, len(content), size)), content)

    @classmethod
    def from_file(cls, fd: int, offset: int, length: int) -> MessageSource:
        def chunks(size: int) -> Iterator[bytes]:
            position, end = offset, offset + length
            while position < end:
                chunk = os.pread(fd, min(size, end - position), position)
                if not chunk:
                    raise OSError(f"message file ended {end - position} bytes early")
                position += len(chunk)
                yield chunk
        return cls(length, chunks)

    @classmethod
    def from_spool(cls, message: _SpoolMessage) -> MessageSource:
        """A claimed queue file: read through its checksum (the last chunk comes only
        after the crc32 matched, so a damaged body is never sent whole)."""
        return cls(message.body_length, lambda size: message.iter_body(size, verify=True))

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        return self._chunks(size)

    def read(self) -> bytes:
        """The whole content (for the 7-bit downgrade only)."""
        return self._content if self._content is not None else b"".join(self._chunks(1 << 20))

    def is_8bit(self) -> bool:
        """Whether any byte is >= 0x80; a file is scanned once, on first use."""
        if self._eight_bit is None:
            if self._content is not None:
                self._eight_bit = needs_downgrade(self._content)
            else:
                self._eight_bit = any(needs_downgrade(chunk) for chunk in self._chunks(1 << 20))
        return self._eight_bit


@dataclass(frozen=True, slots=True)
class _Target:
    hostname: str
    ip: str
    port: int
    preference: int | None

    @property
    def label(self) -> str:
        name = "" if self.hostname == self.ip else self.hostname
        return f"{name}[{self.ip}]:{self.port}"

    @classmethod
    def of(cls, candidate: Any) -> _Target:
        if isinstance(candidate, tuple):
            return cls(*candidate)
        return cls(candidate.hostname, candidate.ip, candidate.port, candidate.preference)


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a session ended before every recipient was decided."""

    text: str
    stage: str
    enhanced: str = "4.4.2"  # RFC 3463 X.4.2: bad connection
    code: int | None = None
    host: str | None = None
    remote: bool = False
    data_sent: bool = False
    tls_failed: bool = False

    def result(self, recipient: str) -> RecipientResult:
        return RecipientResult(recipient, DeliveryStatus.TRANSIENT, self.code, self.enhanced,
                               self.text, self.host, self.stage, self.remote)


class _Session(asyncio.Protocol):
    """One connection: the asyncio protocol that feeds a ClientConnection."""

    def __init__(self, conn: ClientConnection, target: _Target, timeouts: Timeouts) -> None:
        self.conn, self.target, self.timeouts = conn, target, timeouts
        self.transport: asyncio.Transport | None = None
        self.events: deque[ClientEvent] = deque()
        self.messages = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._wakeup: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._lost = False

    @property
    def usable(self) -> bool:
        return not self._lost and self.conn.state is ClientState.READY and not self.events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Said here: uvloop may deliver the greeting before create_connection() returns.
        _info(self.conn.transcript, f"Connected to {self.target.label}.")

    def data_received(self, data: bytes) -> None:
        self.push(self.conn.receive_data(data))
        self.flush()  # a reply may have made the next command due (greeting -> EHLO)
        self._wake()  # the awaited stage may have changed: new timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.push(self.conn.connection_lost())
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def push(self, events: list[ClientEvent]) -> None:
        if events:
            self.events.extend(events)
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        if self._lost:
            raise ConnectionResetError("connection lost while sending")
        if self._writable is not None:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._writable)
            if self._lost:
                raise ConnectionResetError("connection lost while sending")

    async def next_event(self) -> ClientEvent:
        """The next event; each awaited reply gets the full timeout of its stage."""
        self.flush()
        stage: Stage | None | bool = False
        deadline = 0.0
        while not self.events:
            if self._lost:
                return self.fail("connection lost")
            if self.conn.awaiting is not stage:
                stage = self.conn.awaiting
                deadline = self._loop.time() + self.timeouts.for_stage(stage)
            self._wakeup = self._loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wakeup
            except TimeoutError:
                seconds = self.timeouts.for_stage(self.conn.awaiting)
                return self.fail(f"timed out after {seconds:g} s")
        return self.events.popleft()

    def fail(self, reason: str) -> SessionFailed:
        """End the session now; its SessionFailed (the first one, if several)."""
        self.push(self.conn.abort(reason))
        self.close(abort=True)
        while self.events:
            event = self.events.popleft()
            if isinstance(event, SessionFailed):
                self.events.clear()
                return event
        return SessionFailed(None, reason)

    def close(self, abort: bool = False) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort() if abort else self.transport.close()

    async def quit(self) -> None:
        """QUIT politely if the session allows it, then close."""
        try:
            if self.conn.state is ClientState.READY or (
                    self.conn.state is ClientState.FAILED and not self._lost):
                self.push(self.conn.quit())
                while not isinstance(await self.next_event(), (Closed, SessionFailed)):
                    pass
        except RuntimeError:
            pass  # the session was not in a state that allows QUIT
        finally:
            self.close()


@dataclass
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = 0  # deliveries holding or waiting for the semaphore


@dataclass
class _Job:
    sender: str
    recipients: list[tuple[str, Mapping[str, str | None]]]
    source: MessageSource
    mail_params: Mapping[str, str | None]
    results: list[RecipientResult | None]
    downgraded: MessageSource | None = None

    def pending(self) -> list[int]:
        return [index for index, result in enumerate(self.results) if result is None]

    def record(self, index: int, outcome: RecipientOutcome, host: str) -> None:
        reply = outcome.reply
        status = (DeliveryStatus.DELIVERED if reply.code < 400 else
                  DeliveryStatus.PERMANENT if reply.code >= 500 else DeliveryStatus.TRANSIENT)
        enhanced = reply.enhanced or f"{reply.code // 100}.0.0"
        self.results[index] = RecipientResult(self.recipients[index][0], status, reply.code,
                                              enhanced, reply.text, host, outcome.stage.value,
                                              outcome.remote)


class SMTPPool:
    """Delivers messages over SMTP/LMTP, keeping idle connections per destination."""

    def __init__(self, settings: ClientSettings, *, transcript: Transcript | None = None) -> None:
        self.settings = settings
        self.transcript = transcript
        self.connections_opened = 0
        self._idle: dict[str, list[_Session]] = {}
        self._slots: dict[str, _Slot] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._tls_context = settings.tls_context or _opportunistic_context()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """QUIT every idle connection and wait for the goodbyes."""
        for sessions in self._idle.values():
            for session in sessions:
                self._retire(session)
        self._idle.clear()
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def deliver(self, candidates: Sequence[Any], sender: str,
                      recipients: Sequence[Any], source: MessageSource | bytes, *,
                      destination: str | None = None, lmtp: bool = False,
                      mail_params: Mapping[str, str | None] | None = None,
                      transcript: Transcript | None = None) -> list[RecipientResult]:
        """Deliver one message; one result per recipient, in order.

        `candidates`: (hostname, ip, port, preference) tuples or routing.Candidate, in
        the order to try.  `recipients`: addresses, or objects with `address` and
        `params` (spool.Recipient).  `destination` keys connection reuse and the
        concurrency limit (routing.Route.destination); by default the candidates.
        """
        targets = [_Target.of(candidate) for candidate in candidates]
        if not targets:
            raise ValueError("deliver() needs at least one candidate; route the domain first")
        if not recipients:
            return []
        if isinstance(source, bytes):
            source = MessageSource.from_bytes(source)
        job = _Job(sender, [_recipient(r) for r in recipients], source, mail_params or {},
                   [None] * len(recipients))
        say = transcript or self.transcript
        key = destination or ("lmtp:" if lmtp else "smtp:") + ",".join(t.label for t in targets)
        async with self._slot(key):
            await self._deliver(key, targets, job, lmtp, say)
        assert all(result is not None for result in job.results)
        return job.results  # type: ignore[return-value]

    async def _deliver(self, key: str, targets: list[_Target], job: _Job, lmtp: bool,
                       say: Transcript | None) -> None:
        remaining = list(targets)
        plaintext: set[_Target] = set()
        failure: _Failure | None = None
        session = self._take_idle(key, say)
        while job.pending():
            if session is None:
                if not remaining:
                    break
                target = remaining.pop(0)
                session, failure = await self._open(target, lmtp, target not in plaintext, say)
                if session is None:
                    assert failure is not None
                    if failure.tls_failed and target not in plaintext:
                        plaintext.add(target)
                        remaining.insert(0, target)
                    continue
            try:
                failure = await self._send(session, job)
            except BaseException:
                session.close(abort=True)
                raise
            if failure is None:
                self._release(key, session)
                return
            self._retire(session)
            session = None
            if failure.data_sent:
                break
        for index in job.pending():
            if failure is None:  # only stale reused connections, and nowhere left to go
                failure = _Failure("no usable connection to the destination", "connect")
            job.results[index] = failure.result(job.recipients[index][0])

    async def _open(self, target: _Target, lmtp: bool, starttls: bool,
                    say: Transcript | None) -> tuple[_Session | None, _Failure | None]:
        settings = self.settings
        conn = ClientConnection(settings.hostname, lmtp=lmtp,
                                starttls=starttls and settings.starttls, transcript=say)
        session = _Session(conn, target, settings.timeouts)
        loop = asyncio.get_running_loop()
        preference = "" if target.preference is None else f" (MX preference {target.preference})"
        _info(say, f"Trying {target.label}{preference}...")
        try:
            async with asyncio.timeout(settings.timeouts.connect):
                await loop.create_connection(lambda: session, target.ip, target.port)
        except (OSError, TimeoutError) as exc:
            why = (f"timed out after {settings.timeouts.connect:g} s"
                   if isinstance(exc, TimeoutError)
                   else os.strerror(exc.errno) if exc.errno else str(exc))
            text = f"connect to {target.label}: {why}"
            _info(say, text)
            return None, _Failure(text, "connect", "4.4.1", host=target.label)
        self.connections_opened += 1
        try:
            while True:
                event = await session.next_event()
                if isinstance(event, Ready):
                    return session, None
                if isinstance(event, UpgradeTLS):
                    failure = await self._start_tls(session, say)
                    if failure is not None:
                        return None, failure
                    continue
                assert isinstance(event, SessionFailed), event
                self._retire(session)
                return None, _session_failure(event, target)
        except BaseException:
            session.close(abort=True)
            raise

    async def _start_tls(self, session: _Session, say: Transcript | None) -> _Failure | None:
        target, loop = session.target, asyncio.get_running_loop()
        assert session.transport is not None
        server_name = None if _is_address(target.hostname) else target.hostname
        timeout = self.settings.timeouts.tls_handshake
        try:
            async with asyncio.timeout(timeout + 1):
                transport = await loop.start_tls(session.transport, session, self._tls_context,
                                                 server_hostname=server_name,
                                                 ssl_handshake_timeout=timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            text = f"TLS handshake with {target.label} failed: {exc or 'timed out'}"
            _info(say, text + "; trying again without STARTTLS")
            session.fail(text)
            return _Failure(text, "STARTTLS", "4.7.5", host=target.label, tls_failed=True)
        if transport is None:  # the peer closed during the handshake
            session.fail("connection lost during the TLS handshake")
            return _Failure(f"TLS handshake with {target.label} failed: connection lost",
                            "STARTTLS", host=target.label, tls_failed=True)
        session.transport = transport
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            _info(say, f"TLS established: {tls.version()} {tls.cipher()[0]}")
        session.push(session.conn.tls_established())
        return None

    async def _send(self, session: _Session, job: _Job) -> _Failure | None:
        """Run transactions on `session` until every recipient is decided."""
        conn = session.conn
        while batch := job.pending()[: self.settings.max_recipients_per_transaction]:
            source = self._content_for(conn, job, session.target.label)
            if source is None:
                continue  # the downgrade failed: every pending recipient is decided now
            spec = Transaction(job.sender, [job.recipients[i][0] for i in batch], source.size,
                               eight_bit=conn.accepts_8bit and source.is_8bit(),
                               mail_params=job.mail_params,
                               rcpt_params=[job.recipients[i][1] for i in batch])
            session.messages += 1
            session.push(conn.send_message(spec))
            event = await session.next_event()
            while isinstance(event, SendContent):
                failure = await self._stream(session, source)
                if failure is not None:
                    event = failure
                    break
                session.push(conn.end_content())
                event = await session.next_event()
            if isinstance(event, SessionFailed):
                for index, decided in zip(batch, event.decided):
                    if decided is not None:
                        job.record(index, decided, session.target.label)
                return _session_failure(event, session.target)
            assert isinstance(event, TransactionDone), event
            delivered = any(outcome.delivered for outcome in event.outcomes)
            for index, outcome in zip(batch, event.outcomes, strict=True):
                if delivered and outcome.stage is Stage.RCPT and outcome.reply.code == 452:
                    continue  # RFC 5321 4.5.3.1.10: too many recipients; next transaction
                job.record(index, outcome, session.target.label)
            if conn.state is not ClientState.READY:  # e.g. an LMTP session in doubt
                failed = await session.next_event()
                assert isinstance(failed, SessionFailed)
                return _session_failure(failed, session.target)
        return None

    def _content_for(self, conn: ClientConnection, job: _Job, host: str) -> MessageSource | None:
        if conn.accepts_8bit or not job.source.is_8bit():
            return job.source
        if job.downgraded is None:
            try:
                job.downgraded = MessageSource.from_bytes(downgrade_8bit(job.source.read()))
            except DowngradeError as exc:
                # The error names its RFC 3463 status at the end, e.g. "(5.6.7)".
                status = re.search(r"\((5\.\d{1,3}\.\d{1,3})\)\s*$", str(exc))
                refusal = RecipientOutcome("", Reply(
                    554, status.group(1) if status else "5.6.3",  # X.6.3: conversion needed
                    f"{host} lacks 8BITMIME and the 8-bit message cannot be converted: {exc}"),
                    Stage.PRECHECK)
                for index in job.pending():
                    job.record(index, refusal, host)
                return None
        return job.downgraded

    async def _stream(self, session: _Session, source: MessageSource) -> SessionFailed | None:
        conn, timeout = session.conn, self.settings.timeouts.data_block
        try:
            for chunk in source.chunks(self.settings.chunk_size):
                conn.send_content(chunk)
                session.flush()
                await session.drain(timeout)
        except TimeoutError:
            return session.fail(f"timed out after {timeout:g} s sending the message content")
        except ConnectionError:
            return session.fail("connection lost while sending the message content")
        except BaseException:
            session.fail("could not read the message content")  # no final dot goes out
            raise
        return None

    # -- the pool ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, key: str) -> AsyncIterator[None]:
        """One of the destination's `destination_concurrency` connections."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(asyncio.Semaphore(self.settings.destination_concurrency))
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if not slot.users and not self._idle.get(key):
                del self._slots[key]

    def _take_idle(self, key: str, say: Transcript | None) -> _Session | None:
        sessions = self._idle.get(key, [])
        while sessions:
            session = sessions.pop()
            if session.idle_timer is not None:
                session.idle_timer.cancel()
            if session.usable:
                session.conn.transcript = say
                _info(say, f"Reusing the connection to {session.target.label}")
                return session
            self._retire(session)
        return None

    def _release(self, key: str, session: _Session) -> None:
        session.conn.transcript = None
        if not session.usable or session.messages >= self.settings.max_messages_per_session:
            self._retire(session)
            return
        loop = asyncio.get_running_loop()
        session.idle_timer = loop.call_later(self.settings.session_idle_time, self._expire,
                                             key, session)
        self._idle.setdefault(key, []).append(session)

    def _expire(self, key: str, session: _Session) -> None:
        sessions = self._idle.get(key, [])
        if session in sessions:
            sessions.remove(session)
            if not sessions and key not in self._slots:
                del self._idle[key]
            self._retire(session)

    def _retire(self, session: _Session) -> None:
        """QUIT in the background: nobody should wait for a goodbye."""
        task = asyncio.get_running_loop().create_task(session.quit())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def deliver(candidates: Sequence[Any], envelope_sender: str, recipients: Sequence[Any],
                  message_source: MessageSource | bytes, *, settings: ClientSettings,
                  pool: SMTPPool | None = None, **options: Any) -> list[RecipientResult]:
    """`SMTPPool.deliver` on `pool`, or on a pool of its own closed afterwards."""
    if pool is not None:
        return await pool.deliver(candidates, envelope_sender, recipients, message_source,
                                  **options)
    async with SMTPPool(settings) as own:
        return await own.deliver(candidates, envelope_sender, recipients, message_source,
                                 **options)


def _session_failure(event: SessionFailed, target: _Target) -> _Failure:
    stage = event.stage.value if event.stage is not None else "the session"
    if event.reply is not None:
        reply = event.reply
        return _Failure(reply.text, stage, reply.enhanced or f"{reply.code // 100}.0.0",
                        reply.code, target.label, remote=True, data_sent=event.data_sent)
    text = f"host {target.label}: {event.reason}"
    if event.data_sent:
        text += " after the end of DATA; the message may have been accepted and may arrive twice"
    elif event.stage is Stage.GREETING:
        text += " while waiting for the greeting"
    elif event.stage is not None:
        text += f" while waiting for the reply to {stage}"
    return _Failure(text, stage, host=target.label, data_sent=event.data_sent)


def _recipient(item: Any) -> tuple[str, Mapping[str, str | None]]:
    if isinstance(item, str):
        return item, {}
    return item.address, getattr(item, "params", {}) or {}


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _info(say: Transcript | None, text: str) -> None:
    if say is not None:
        say(Direction.INFO, text)


def _opportunistic_context() -> ssl.SSLContext:
    """TLS that encrypts without checking certificates: MX certificates rarely match
    (RFC 7672 2.2 explains why opportunistic TLS does not authenticate)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
