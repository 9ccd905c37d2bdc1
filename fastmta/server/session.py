"""One SMTP client connection: the asyncio.Protocol that drives protocol.server.

Bytes from the socket go to `ServerConnection.receive_data()`; the events that come
back are acted on here (open a spool file, write content, commit, upgrade to TLS,
close) and every reply queued by the protocol leaves in one write per packet.

Invariants:
- The 250 after DATA is queued only once `MessageWriter.commit()` returned: the file
  is fsynced, renamed into incoming/, and incoming/ fsynced.
- A message whose content did not complete (client gone mid-DATA, protocol refusal,
  idle timeout) is aborted: nothing of it stays in tmp/ or incoming/.
- Memory per session is bounded: reading pauses while the protocol holds more than
  `MAX_PENDING_INPUT` unprocessed bytes or while the client does not read our
  replies; message content goes to the spool writer, which spills to disk.
- Errors inside a session close that session only; they never reach the loop.
- A closed session gives its socket back even if the client never reads: what cannot
  be sent within `CLOSE_GRACE` is dropped with a reset.
- A client that half-closes while a commit is pending still gets the 250 and the
  replies to what it pipelined behind it; then the session closes (plain TCP only).
"""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from typing import TYPE_CHECKING

from fastmta import metrics
from fastmta.process import logsetup
from fastmta.protocol.events import (
    Close,
    DataChunk,
    DataStart,
    MailRejected,
    MessageAborted,
    MessageComplete,
    RcptRejected,
    StartTLS,
)
from fastmta.protocol.received import format_received
from fastmta.protocol.replies import SPOOL_FAILURE
from fastmta.protocol.server import PeerInfo, ServerConnection
from fastmta.spool import Envelope, Recipient, SpoolError

if TYPE_CHECKING:
    from fastmta.protocol.state import Transaction
    from fastmta.server.service import ReceiveService
    from fastmta.spool import MessageWriter

log = logging.getLogger("fastmta.smtpd")

MAX_PENDING_INPUT = 256 * 1024  # unprocessed input held while a commit or TLS is pending
# Once the session is closed, how long a client that does not read gets to take the
# replies still buffered (the last one a 421 or 554) before the socket is reset.  At
# most idle_timeout: it is not given longer to read than it was to talk.
CLOSE_GRACE = 10.0

_date_cache: tuple[int, str] = (0, "")


def rfc5322_now() -> str:
    """The current date as an RFC 5322 date-time, computed at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, localtime=True))
    return _date_cache[1]


class SMTPSession(asyncio.Protocol):
    __slots__ = (
        "close_reason",
        "closing",
        "conn",
        "greeting_handle",
        "idle_handle",
        "input_ended",
        "last_activity",
        "loop",
        "messages",
        "peer",
        "reading_paused",
        "rejected",
        "service",
        "size",
        "started",
        "transaction",
        "transport",
        "waiting",
        "who",
        "writer",
        "writing_paused",
    )

    def __init__(self, service: ReceiveService) -> None:
        self.service = service
        self.loop = service.loop
        self.transport: asyncio.Transport | None = None
        self.conn: ServerConnection | None = None
        self.peer: PeerInfo | None = None
        self.writer: MessageWriter | None = None
        self.transaction: Transaction | None = None
        self.last_activity = 0.0
        self.idle_handle: asyncio.TimerHandle | None = None
        self.greeting_handle: asyncio.TimerHandle | None = None
        self.closing = False
        self.reading_paused = False
        self.writing_paused = False
        self.waiting = False  # a commit or TLS handshake is pending
        self.started = 0.0
        self.messages = 0
        self.rejected = 0
        self.close_reason = "client closed"
        self.input_ended = False  # the client half-closed while a commit was pending
        self.who = "unknown"  # the client as log lines name it: "ip:port", "[ipv6]:port"
        self.size = 0  # of the message being committed

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername") or ("unknown", 0)
        ip, port = peername[0], peername[1]
        self.peer = PeerInfo(ip, port)
        self.who = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        self.started = self.last_activity = self.loop.time()
        service = self.service
        refusal = service.admit(self)
        if refusal is not None:
            transport.write(refusal)  # type: ignore[attr-defined]  # a stream transport
            metrics.connection_refused()
            self.close_reason = "refused: too many connections"
            self.closing = True
            transport.close()
            return
        self.conn = ServerConnection(service.settings, service.policy, self.peer)
        metrics.connection_opened()
        if service.greeting_delay > 0 and not service.policy.is_relay_client(ip):
            # A pregreet test (as Postfix's postscreen): spambots talk before the 220.
            self.greeting_handle = self.loop.call_later(service.greeting_delay, self._greet)
        else:
            self._greet()
        self.idle_handle = self.loop.call_later(service.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or self.closing:
            return
        self.last_activity = self.loop.time()
        if self.greeting_handle is not None:
            # RFC 5321 4.3.1: the client waits for the greeting; one that talks first
            # is a spambot sending blind (the idea behind Postfix's postscreen).
            self.greeting_handle.cancel()
            self.greeting_handle = None
            self._handle(conn.early_talk())
            self._flush()
            return
        try:
            events = conn.receive_data(data)
            if events:
                self._handle(events)
        except Exception:
            log.exception("%s: internal error while handling input; closing the session", self.who)
            self._abort_message()
            self.close_reason = "internal error"
            self._close()
            return
        self._flush()
        if conn.input_buffered > MAX_PENDING_INPUT and not self.reading_paused:
            self._pause_reading()

    def eof_received(self) -> bool | None:
        if self.waiting and self.writer is not None and not self.closing \
                and self.conn is not None and not self.conn.session.tls:
            # A client that half-closes after pipelining "... CRLF.CRLF QUIT" still
            # reads: keep our side open until the commit's 250 (and the replies to
            # what was held behind it) went out, then close (see _after_verdict).
            # Over TLS asyncio cannot half-close, so the client loses those replies.
            self.input_ended = True
            return True
        return None  # nothing pending: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for handle in (self.idle_handle, self.greeting_handle):
            if handle is not None:
                handle.cancel()
        if self.conn is not None:
            self.conn.connection_lost()
            metrics.connection_closed()
        if self.writer is not None and not self.waiting:
            self._abort_message()  # gone mid-DATA: nothing may reach incoming/
        self.service.release(self)
        if log.isEnabledFor(logging.INFO):  # the line per connection
            reason = self.close_reason if exc is None else f"{self.close_reason} ({exc})"
            logsetup.info(log, f"{self.who}: disconnect helo={self._helo()} messages={self.messages} "
                               f"rejected={self.rejected} "
                               f"duration={self.loop.time() - self.started:.3f}s reason={reason}")

    def pause_writing(self) -> None:
        # The client does not read our replies: stop reading its commands until it does.
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._maybe_resume_reading()

    # --- events from the protocol -------------------------------------------------------

    def _handle(self, events: list) -> None:
        for event in events:
            kind = type(event)
            if kind is DataChunk:
                if self.writer is not None:
                    self.writer.write(event.data)
            elif kind is DataStart:
                self._open_message(event.transaction)
            elif kind is MessageComplete:
                self._commit_message(event.size)
            elif kind is MessageAborted:
                self._abort_message()
                self.rejected += 1
                metrics.message_rejected(metrics.rejection_reason(event.reply.enhanced))
                log.info("%s: rejected from=<%s> reason=%s", self.who,
                         self.transaction.sender if self.transaction else "",
                         event.reply.to_bytes(self.service.hostname).decode().rstrip())
            elif kind is MailRejected:
                self.rejected += 1
                metrics.message_rejected("mail_" + metrics.rejection_reason(event.reply.enhanced))
                log.info("%s: sender refused from=<%s> reason=%s", self.who, event.address,
                         event.reply.to_bytes(self.service.hostname).decode().rstrip())
            elif kind is RcptRejected:
                metrics.message_rejected("rcpt_" + metrics.rejection_reason(event.reply.enhanced))
                log.info("%s: recipient refused from=<%s> to=<%s> reason=%s", self.who,
                         self.conn.transaction.sender if self.conn and self.conn.transaction else "",
                         event.address, event.reply.to_bytes(self.service.hostname).decode().rstrip())
            elif kind is StartTLS:
                self._start_tls()
            elif kind is Close:
                self.close_reason = event.reason.value
                self._close()

    def _open_message(self, transaction: Transaction) -> None:
        self.transaction = transaction
        envelope = Envelope(
            sender=transaction.sender,
            recipients=[Recipient(rcpt.address, dict(rcpt.params)) for rcpt in transaction.recipients],
            mail_params=dict(transaction.mail_params),
            client_address=self.peer.ip if self.peer else "",
            helo=transaction.helo or "",
            protocol=transaction.protocol_name,
        )
        try:
            writer = self.service.spool.new_message(envelope)
            recipients = transaction.recipients
            writer.write(format_received(
                transaction.helo, envelope.client_address, None, self.service.hostname,
                transaction.protocol_name, writer.queue_id,
                recipients[0].address if len(recipients) == 1 else None, rfc5322_now(),
            ))
        except (SpoolError, OSError) as exc:
            log.error("%s: cannot open a spool file: %s", self.who, exc)
            self.writer = None
            return
        self.writer = writer

    def _commit_message(self, size: int) -> None:
        conn = self.conn
        assert conn is not None
        writer = self.writer
        if writer is None:  # opening the spool file failed: tell the client to retry later
            self._after_verdict(conn.reject_message(SPOOL_FAILURE), None, size, "spool unavailable")
            return
        self.waiting = True
        self.size = size
        try:
            # No Task per message: the spool calls _committed from its wake-up callback.
            writer.commit_then(self._committed, self.loop)
        except Exception:
            log.exception("%s: unexpected error committing %s", self.who, writer.queue_id)
            self._after_verdict(conn.reject_message(SPOOL_FAILURE), None, size, "internal error")

    def _committed(self, writer: MessageWriter, error: SpoolError | None) -> None:
        conn = self.conn
        assert conn is not None
        if error is None:
            self._after_verdict(conn.accept_message(writer.queue_id), writer.queue_id, self.size, None)
        else:
            log.error("%s: spool write failed for %s: %s", self.who, writer.queue_id, error)
            self._after_verdict(conn.reject_message(SPOOL_FAILURE), None, self.size, str(error))

    def _after_verdict(self, events: list, queue_id: str | None, size: int, error: str | None) -> None:
        self.waiting = False
        self.writer = None
        transaction = self.transaction
        self.transaction = None
        if queue_id is not None:
            self.messages += 1
            self.service.accepted += 1
            metrics.message_accepted(size, len(transaction.recipients) if transaction else 0)
            if log.isEnabledFor(logging.INFO):  # the line per accepted message
                sender, recipients = ((transaction.sender, transaction.recipients)
                                      if transaction else ("", []))
                logsetup.info(log, f"{self.who}: {queue_id}: accepted from=<{sender}> "
                                   f"to={','.join([f'<{r.address}>' for r in recipients])} "
                                   f"size={size}")
        else:
            self.rejected += 1
            metrics.message_rejected(metrics.rejection_reason(SPOOL_FAILURE.enhanced))
            log.warning("%s: message not accepted (452 4.3.1): %s", self.who, error)
        if self.closing:
            return
        try:
            if events:
                self._handle(events)
        except Exception:
            log.exception("%s: internal error after a commit; closing the session", self.who)
            self.close_reason = "internal error"
            self._close()
            return
        self._flush()
        if self.input_ended and not self.waiting:
            self._close()  # everything the client sent is answered; it sends no more
            return
        self._maybe_resume_reading()

    def _abort_message(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    # --- TLS ----------------------------------------------------------------------------

    def _start_tls(self) -> None:
        self._flush()  # the 220 Ready to start TLS goes out in plaintext first
        self.waiting = True
        self.loop.create_task(self._upgrade())

    async def _upgrade(self) -> None:
        transport = self.transport
        tls_context = self.service.tls_context
        assert transport is not None and self.conn is not None and tls_context is not None
        try:
            new_transport = await self.loop.start_tls(
                transport, self, tls_context, server_side=True,
                ssl_handshake_timeout=60.0,
            )
        except (TimeoutError, OSError, ConnectionError) as exc:
            log.info("%s: TLS handshake failed: %s", self.who, exc)
            self.close_reason = "TLS handshake failed"
            self.closing = True
            transport.abort()
            return
        except Exception as exc:  # noqa: BLE001 - ssl.SSLError and friends: the session ends, the worker goes on
            log.info("%s: TLS handshake failed: %s", self.who, exc)
            self.close_reason = "TLS handshake failed"
            self.closing = True
            transport.abort()
            return
        if new_transport is None or self.closing:
            return
        self.transport = new_transport
        self.waiting = False
        self._handle(self.conn.tls_established())
        self._flush()
        self._maybe_resume_reading()

    # --- flow control, timers, closing -------------------------------------------------

    def _greet(self) -> None:
        self.greeting_handle = None
        if self.conn is not None and not self.closing:
            self.conn.greeting()
            self._flush()

    def _flush(self) -> None:
        conn = self.conn
        if conn is None or self.transport is None:
            return
        out = conn.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (self.reading_paused and not self.writing_paused and not self.waiting
                and not self.closing and self.transport is not None):
            self.reading_paused = False
            self.transport.resume_reading()

    def _check_idle(self) -> None:
        self.idle_handle = None
        if self.closing or self.conn is None:
            return
        timeout = self.service.idle_timeout
        idle = self.loop.time() - self.last_activity
        if idle < timeout or self.waiting:
            self.idle_handle = self.loop.call_later(max(timeout - idle, 1.0), self._check_idle)
            return
        self._abort_message()
        self._handle(self.conn.timeout())
        self._flush()
        self._close()

    def shutdown(self) -> None:
        """Drain timeout reached: tell the client 421 and close (an open DATA is abandoned)."""
        if self.closing or self.conn is None or self.waiting:
            return
        self._abort_message()
        self.close_reason = "server shutting down"
        self._handle(self.conn.shutdown())
        self._flush()
        self._close()

    def _close(self) -> None:
        if not self.closing:
            self._flush()  # e.g. the 221 or 421 queued with the Close event
            self.closing = True
            transport = self.transport
            if transport is not None:
                transport.close()  # sends what was written, then closes
                if transport.get_write_buffer_size():
                    # close() waits for the buffer to drain: a client that never reads
                    # would keep the socket, and its connection slots, for ever.  The idle
                    # timer is done with; its slot holds the deadline (connection_lost
                    # cancels it).
                    if self.idle_handle is not None:
                        self.idle_handle.cancel()
                    self.idle_handle = self.loop.call_later(
                        min(CLOSE_GRACE, self.service.idle_timeout), transport.abort)

    # --- logging helpers ----------------------------------------------------------------

    def _helo(self) -> str:
        conn = self.conn
        helo = conn.session.helo if conn is not None else None
        return helo or "-"
