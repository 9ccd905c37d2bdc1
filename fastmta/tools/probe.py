"""`fastmta route --probe`: connect to a candidate, read its greeting and EHLO reply, QUIT.

The dialogue goes through the sans-IO client (fastmta.protocol.client.ClientConnection),
so the probe reads replies exactly as delivery will: multiline replies, EHLO refused
then HELO, a 554 greeting.  No STARTTLS (the probe shows whether it is offered) and no
MAIL command: nothing is ever sent to the peer but EHLO (or LHLO, or HELO) and QUIT.

Each step waits at most `timeout` seconds; a probe never raises for a network problem,
it reports it in `ProbeResult.error` (with `hint` saying what to do when it timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastmta.delivery.routing import Candidate
from fastmta.protocol.client import (
    ClientConnection,
    ClientEvent,
    Closed,
    Direction,
    Ready,
    SessionFailed,
)
from fastmta.tools.hints import no_answer_hint
from fastmta.tools.transcript import format_line

__all__ = ["ProbeResult", "probe_all", "probe_candidate"]


@dataclass
class ProbeResult:
    """What one candidate said; `ok` when it greeted with 220 and accepted EHLO or HELO."""

    hostname: str
    ip: str
    port: int
    preference: int | None
    ok: bool = False
    greeting: str | None = None  # first line of the greeting, "220 mx.example.com ESMTP"
    esmtp: bool = False  # False: the peer refused EHLO and took HELO (RFC 821 server)
    extensions: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    timed_out: bool = False  # the error is a timeout: nothing answered, not even a refusal
    transcript: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        where = f"[{self.ip}]:{self.port}"
        return where if self.hostname == self.ip else f"{self.hostname}{where}"

    def summary(self) -> str:
        if not self.ok:
            return f"no: {self.error}"
        if not self.esmtp:
            return "yes: answers HELO only (no ESMTP extensions)"
        offered = ", ".join(f"{k} {v}".strip() for k, v in self.extensions.items()) or "none"
        return f"yes: ESMTP, extensions: {offered}"

    @property
    def hint(self) -> str | None:
        return no_answer_hint(self.port) if self.timed_out else None

    def to_dict(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "ip": self.ip, "port": self.port,
                "preference": self.preference, "ok": self.ok, "greeting": self.greeting,
                "esmtp": self.esmtp, "extensions": self.extensions, "error": self.error,
                "hint": self.hint, "transcript": self.transcript}


async def probe_all(candidates: tuple[Candidate, ...], *, hostname: str, lmtp: bool = False,
                    timeout: float = 30.0,
                    on_done: Callable[[int, ProbeResult], None] | None = None) -> list[ProbeResult]:
    """Probe every candidate at once; results in the candidates' order.  `on_done(index,
    result)` is called as each probe ends, so a caller can show it without waiting for the
    slowest one."""

    async def probe(index: int, candidate: Candidate) -> ProbeResult:
        result = await probe_candidate(candidate, hostname=hostname, lmtp=lmtp, timeout=timeout)
        if on_done is not None:
            on_done(index, result)
        return result

    return list(await asyncio.gather(*(probe(i, c) for i, c in enumerate(candidates))))


async def probe_candidate(candidate: Candidate, *, hostname: str, lmtp: bool = False,
                          timeout: float = 30.0) -> ProbeResult:
    result = ProbeResult(candidate.hostname, candidate.ip, candidate.port, candidate.preference)

    def record(direction: Direction, text: str) -> None:
        result.transcript.extend(format_line(direction, line) for line in text.split("\n"))

    conn = ClientConnection(hostname, lmtp=lmtp, starttls=False, transcript=record)
    record(Direction.INFO, f"Trying {result.label}...")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(candidate.ip, candidate.port)
    except (OSError, TimeoutError) as exc:
        why = (f"timed out after {timeout:g} s" if isinstance(exc, TimeoutError)
               else os.strerror(exc.errno) if exc.errno else str(exc))
        result.error = f"connect to {result.label}: {why}"
        result.timed_out = isinstance(exc, TimeoutError)
        record(Direction.INFO, result.error)
        return result
    record(Direction.INFO, f"Connected to {result.label}.")
    try:
        event = await _next_event(conn, reader, writer, timeout)
        if conn.greeting is not None:
            result.greeting = f"{conn.greeting.code} {conn.greeting.text.split(chr(10))[0]}"
        if isinstance(event, Ready):
            result.ok, result.esmtp, result.extensions = True, conn.esmtp, dict(event.extensions)
        elif isinstance(event, SessionFailed):
            result.error = _failure_text(event)
            if not event.can_quit:  # can_quit: a 554 greeting or a refused EHLO; it listens
                return result
        else:
            result.error = "the connection was closed before the greeting"
        if not isinstance(event, Closed):
            ended = conn.quit()
            _flush(conn, writer)
            if not any(isinstance(e, Closed) for e in ended):
                await _next_event(conn, reader, writer, timeout)  # the reply to QUIT
    except TimeoutError:
        stage = conn.awaiting.value if conn.awaiting is not None else "the session"
        if result.ok or result.error is not None:  # decided already; only QUIT went unanswered
            record(Direction.INFO, f"no reply to {stage} within {timeout:g} s; closed")
        else:
            result.error = f"no reply to {stage} within {timeout:g} s"
            result.timed_out = True
            record(Direction.INFO, result.error)
    except OSError as exc:
        if not result.ok:
            result.error = f"connection to {result.label} failed: {exc}"
            record(Direction.INFO, result.error)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return result


async def _next_event(conn: ClientConnection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, timeout: float) -> ClientEvent:
    """Read until the client reports Ready, SessionFailed or Closed; answer as it asks."""
    while True:
        async with asyncio.timeout(timeout):
            data = await reader.read(65536)
        events = conn.receive_data(data) if data else conn.connection_lost()
        _flush(conn, writer)  # e.g. the EHLO that the greeting made due
        for event in events:
            if isinstance(event, (Ready, SessionFailed, Closed)):
                return event
        if not data:
            return Closed()


def _flush(conn: ClientConnection, writer: asyncio.StreamWriter) -> None:
    data = conn.data_to_send()
    if data and not writer.is_closing():
        writer.write(data)


def _failure_text(event: SessionFailed) -> str:
    if event.reply is not None:
        code, text = event.reply.code, event.reply.text.split("\n")[0]
        enhanced = f" {event.reply.enhanced}" if event.reply.enhanced else ""
        return f"{event.reason}: {code}{enhanced} {text}"
    return event.reason
