"""The TLS context for STARTTLS (RFC 3207), from the configured certificate and key.

Server side only, TLS 1.2 or newer, the stdlib's default cipher choice.  Clients
are not asked for certificates (an MX accepts mail from anyone; relaying is
decided by policy, not by client certificates).
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TLSConfigError(ValueError):
    """The certificate or key cannot be loaded."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"cannot load TLS certificate {cert} with key {key}: {exc}; "
            "check that both are PEM files and that the key matches the certificate"
        ) from None
    return context
