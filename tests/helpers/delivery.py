"""Running a delivery worker's queue manager once over a spool, for tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from fastmta.config import Config
from fastmta.delivery.manager import QueueManager
from fastmta.spool import Spool


def deliver_until_idle(config: Config, root: Path, clock: Callable[[], float] = time.time) -> int:
    """A fresh Spool and QueueManager attempt everything due at `clock()` (and the mail
    those attempts queue), as a delivery worker would; returns how many attempts."""
    async def main() -> int:
        spool = Spool(root)
        manager = QueueManager(config, spool, clock=clock)
        try:
            return await manager.run_until_idle()
        finally:
            await manager.close()
            spool.close()
    return asyncio.run(main())
