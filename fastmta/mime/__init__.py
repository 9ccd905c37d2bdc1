"""Message-level transforms built on the kernels: 8-bit to 7-bit downgrade and header encoding.

Public API (the outbound client uses these when the next hop lacks 8BITMIME):
- `needs_downgrade(message) -> bool`: any byte >= 0x80.
- `downgrade_8bit(message) -> bytes`: the same message in 7 bits, or `DowngradeError`.
- `encode_field(raw_field) -> bytes`: one header field with 8-bit bytes made ASCII.
Imports point one way: mime uses fastmta.kernels, never the protocol or the spool.
"""

from fastmta.mime.downgrade import DowngradeError, downgrade_8bit, needs_downgrade
from fastmta.mime.headers import encode_field

__all__ = ["DowngradeError", "downgrade_8bit", "encode_field", "needs_downgrade"]
