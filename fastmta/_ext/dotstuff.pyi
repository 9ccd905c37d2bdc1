"""Type stub for the compiled dot-stuffer (twin: fastmta._pure.dotstuff)."""

from typing_extensions import Buffer

__all__ = ["DotStuffer", "dot_stuff"]

class DotStuffer:
    """Turn message content into the wire form of DATA, chunk by chunk."""

    def __init__(self) -> None: ...
    def feed(self, data: Buffer) -> bytes: ...
    def finish(self) -> bytes: ...

def dot_stuff(data: Buffer) -> bytes: ...
