"""What every SMTP session of one receive process shares, and the serving of listening sockets.

`ReceiveService(config, loop)` builds, once per process, the protocol settings, the
recipient policy (with the aliases file), the spool writer and the TLS context, and
keeps the open sessions so it can enforce connection limits and drain them on
shutdown.  `bind_listeners(config)` binds every `listen` address (the master does it
once, before forking, so all workers share the sockets).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from fastmta.aliases import load_aliases
from fastmta.config import Config
from fastmta.policy import RecipientPolicy
from fastmta.protocol.server import ServerSettings
from fastmta.server.session import SMTPSession
from fastmta.server.tls import server_context
from fastmta.spool import Spool

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("fastmta.smtpd")

LISTEN_BACKLOG = 1024


def server_settings(config: Config) -> ServerSettings:
    """The protocol's view of the config."""
    return ServerSettings(
        hostname=config.hostname,
        max_message_size=config.max_message_size,
        max_recipients=config.max_recipients,
        max_errors=config.max_errors,
        max_junk_commands=config.max_junk_commands,
        max_received_headers=config.max_received_headers,
        bare_line_endings=config.bare_line_endings,
        tls_available=config.tls_cert is not None,
        vrfy_enabled=config.vrfy,
        expn_enabled=config.expn,
    )


def bind_listeners(config: Config) -> list[socket.socket]:
    """Bind and listen on every configured address; raise OSError naming the address."""
    sockets = []
    try:
        for host, port in config.listen_addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}; "
                                         "is another server using that port?") from None
            sockets.append(sock)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ReceiveService:
    """Shared state of the SMTP sessions in one process."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop,
                 spool: Spool | None = None, tls_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.loop = loop
        self.hostname = config.hostname
        self.settings = server_settings(config)
        aliases = load_aliases(config.aliases_file) if config.aliases_file is not None else {}
        self.policy = RecipientPolicy.from_config(config, aliases)
        self.spool = spool if spool is not None else Spool(config.spool, sync_mode=config.spool_sync,
                                                             fsync_threads=config.spool_commit_threads,
                                                             reuse_files=config.spool_reuse_files)
        # A worker gets the context built by the master, which read the key as root.
        self.tls_context: ssl.SSLContext | None = tls_context
        if tls_context is None and config.tls_cert is not None and config.tls_key is not None:
            self.tls_context = server_context(config.tls_cert, config.tls_key)
        self.idle_timeout = config.idle_timeout
        self.greeting_delay = config.greeting_delay
        self.sessions: set[SMTPSession] = set()
        self.per_ip: dict[str, int] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.accepted = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._too_many = (f"421 4.7.0 {self.hostname} Too many connections; "
                          "try again later\r\n").encode()

    # --- sessions ------------------------------------------------------------------------

    def admit(self, session: SMTPSession) -> bytes | None:
        """Register a new session, or return the 421 refusing it (RFC 5321 3.8)."""
        config = self.config
        ip = session.peer.ip if session.peer else ""
        if len(self.sessions) >= config.max_connections:
            log.warning("%s: refused: this worker has %d sessions open (max_connections)",
                        ip, len(self.sessions))
            return self._too_many
        limit = config.max_connections_per_ip
        count = self.per_ip.get(ip, 0)
        if limit and count >= limit and not self.policy.is_relay_client(ip):
            log.warning("%s: refused: %d sessions open from this address (max_connections_per_ip)",
                        ip, count)
            return self._too_many
        self.per_ip[ip] = count + 1
        self.sessions.add(session)
        self._idle.clear()
        return None

    def release(self, session: SMTPSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            ip = session.peer.ip if session.peer else ""
            count = self.per_ip.get(ip, 1) - 1
            if count > 0:
                self.per_ip[ip] = count
            else:
                self.per_ip.pop(ip, None)
        if not self.sessions:
            self._idle.set()

    # --- serving -------------------------------------------------------------------------

    async def start(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            server = await self.loop.create_server(
                lambda: SMTPSession(self), sock=sock, backlog=LISTEN_BACKLOG,
            )
            self.servers.append(server)

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let open sessions finish for `timeout` seconds, then close them.

        Sessions waiting for a commit are never cut: a message the spool accepted is
        durable whether or not the client saw its 250."""
        self.stop_accepting()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.info("drain timeout: closing %d open sessions with 421", len(self.sessions))
            for session in list(self.sessions):
                session.shutdown()
            try:
                await asyncio.wait_for(self._idle.wait(), 10.0)
            except TimeoutError:
                log.warning("%d sessions still open after the drain; exiting anyway",
                            len(self.sessions))
