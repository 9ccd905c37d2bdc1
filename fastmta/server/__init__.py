"""Receive-side I/O: asyncio transports that drive the sans-IO protocol and feed the spool.

`service.ReceiveService` holds what every session shares (settings, policy, spool,
TLS context, connection counts) and serves listening sockets; `session.SMTPSession`
is the asyncio.Protocol of one client connection; `tls.server_context` builds the
STARTTLS context.  Nothing here parses SMTP: that is fastmta.protocol's job.
"""
