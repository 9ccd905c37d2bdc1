"""Spool benchmarks: durable commits per second and CPU per message, and the fsync strategies
the group commit could use (docs/spool.md has the numbers and the choice they led to).

Run: .venv/bin/python -m pytest bench/test_bench_spool.py --benchmark-enable -q
Each result carries extra_info: messages per second and CPU milliseconds per message
(process CPU, all threads: the event loop and the commit thread).  The spool lives in a
temporary directory on the file system of $TMPDIR; set it to the spool's real file system.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fastmta.spool import Envelope, Recipient, Spool
from fastmta.spool.fileformat import encode_envelope, parse_file

MESSAGE = b"Received: from client.example.org ([192.0.2.7]) by mx.example.net\r\n" + b"x" * 958 + b"\r\n"
assert len(MESSAGE) == 1024 + 3
ENVELOPE = Envelope(sender="alice@example.org",
                    recipients=[Recipient("bob@example.net", {"NOTIFY": "FAILURE"})],
                    mail_params={"BODY": "8BITMIME", "SIZE": "1024"},
                    client_address="192.0.2.7", helo="client.example.org")


def record(benchmark: Any, messages: int, wall: float, cpu: float) -> None:
    """Keep each round's rate and CPU; extra_info shows their medians."""
    rounds = benchmark.extra_info.setdefault("rounds", [])
    rounds.append((messages / wall, cpu / messages * 1e3))
    benchmark.extra_info["messages_per_second"] = round(statistics.median(r[0] for r in rounds))
    benchmark.extra_info["cpu_ms_per_message"] = round(statistics.median(r[1] for r in rounds), 3)


SPOOL_MODES = {
    "fsync-4-threads": {"sync_mode": "fsync", "fsync_threads": 4},  # the default
    "fsync-1-thread": {"sync_mode": "fsync", "fsync_threads": 1},
    "syncfs": {"sync_mode": "syncfs"},
}


@pytest.mark.parametrize("mode", list(SPOOL_MODES))
@pytest.mark.parametrize("concurrency", [1, 20])
def test_commit_1k_messages(benchmark: Any, tmp_path: Path, concurrency: int, mode: str) -> None:
    spool = Spool(tmp_path, **SPOOL_MODES[mode])  # type: ignore[arg-type]
    messages = 200 if concurrency == 1 else 1000

    async def one() -> None:
        writer = spool.new_message(ENVELOPE)
        writer.write(MESSAGE)
        await writer.commit()

    async def run() -> None:
        for _ in range(messages // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))

    def measured() -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        asyncio.run(run())
        record(benchmark, messages, time.perf_counter() - wall, time.process_time() - cpu)

    benchmark.pedantic(measured, rounds=5, iterations=1)
    benchmark.extra_info["messages_per_batch"] = round(spool.committed_messages / spool.committed_batches, 1)
    spool.close()


# --- the raw strategies, without the spool around them ------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


class RawQueue:
    def __init__(self, root: Path) -> None:
        self.tmp, self.incoming = root / "tmp", root / "incoming"
        root.mkdir(exist_ok=True)
        self.tmp.mkdir()
        self.incoming.mkdir()
        self.directory = os.open(self.incoming, os.O_RDONLY | os.O_DIRECTORY)
        self.count = 0
        self.pool = ThreadPoolExecutor(4)

    def create(self) -> tuple[str, int]:
        self.count += 1
        name = str(self.count)
        fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, MESSAGE)
        return name, fd

    def publish(self, name: str) -> None:
        os.rename(self.tmp / name, self.incoming / name)

    def one_at_a_time(self, batch: int) -> None:
        for _ in range(batch):
            name, fd = self.create()
            os.fsync(fd)
            os.close(fd)
            self.publish(name)
            os.fsync(self.directory)

    def batch_fsync(self, batch: int) -> None:
        for _ in range(batch):
            name, fd = self.create()
            os.fsync(fd)
            os.close(fd)
            self.publish(name)
        os.fsync(self.directory)

    def batch_threads(self, batch: int) -> None:
        items = [self.create() for _ in range(batch)]

        def fsync_share(share: list[tuple[str, int]]) -> None:
            for _, fd in share:
                os.fsync(fd)

        list(self.pool.map(fsync_share, [items[i::4] for i in range(4)]))
        for name, fd in items:
            os.close(fd)
            self.publish(name)
        os.fsync(self.directory)

    def batch_syncfs(self, batch: int) -> None:
        items = [self.create() for _ in range(batch)]
        for _, fd in items:
            os.close(fd)
        _libc.syncfs(self.directory)
        for name, _ in items:
            self.publish(name)
        os.fsync(self.directory)


STRATEGIES: dict[str, Callable[[RawQueue, int], None]] = {
    "fsync+dir-fsync-each": RawQueue.one_at_a_time,
    "batch-fsync-each+one-dir-fsync": RawQueue.batch_fsync,
    "batch-4-fsync-threads+one-dir-fsync": RawQueue.batch_threads,
    "batch-syncfs+one-dir-fsync": RawQueue.batch_syncfs,
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_fsync_strategy_batch_of_20(benchmark: Any, tmp_path: Path, strategy: str) -> None:
    queue = RawQueue(tmp_path)
    batches, batch = 20, 20

    def measured() -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            STRATEGIES[strategy](queue, batch)
        record(benchmark, batches * batch, time.perf_counter() - wall, time.process_time() - cpu)

    benchmark.pedantic(measured, rounds=5, iterations=1)
    queue.pool.shutdown()


def test_compare_interleaved(benchmark: Any, tmp_path: Path, capsys: Any) -> None:
    """Every strategy and spool mode in rotation, so neighbours' disk load hits them alike;
    prints the table that docs/spool.md quotes."""
    raw = RawQueue(tmp_path / "raw")
    spools = {name: Spool(tmp_path / name, **options)  # type: ignore[arg-type]
              for name, options in SPOOL_MODES.items()}

    def spool_run(spool: Spool, messages: int, concurrency: int = 1) -> None:
        async def one() -> None:
            writer = spool.new_message(ENVELOPE)
            writer.write(MESSAGE)
            await writer.commit()

        async def run() -> None:
            for _ in range(messages // concurrency):
                await asyncio.gather(*(one() for _ in range(concurrency)))

        asyncio.run(run())

    def raw_run(strategy: Callable[[RawQueue, int], None], messages: int) -> None:
        for _ in range(messages // 20):
            strategy(raw, 20)

    cases: dict[str, tuple[int, Callable[[int], None]]] = {
        f"raw: {name}": (400, functools.partial(raw_run, strategy)) for name, strategy in STRATEGIES.items()
    }
    default = spools["fsync-4-threads"]
    cases["spool, 1 at a time, default"] = (200, lambda n: spool_run(default, n, 1))
    for name, spool in spools.items():
        cases[f"spool, 20 at a time, {name}"] = (400, functools.partial(spool_run, spool, concurrency=20))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}

    def measured() -> None:
        for _ in range(5):
            for name, (messages, run) in cases.items():
                wall, cpu = time.perf_counter(), time.process_time()
                run(messages)
                results[name].append((messages / (time.perf_counter() - wall),
                                      (time.process_time() - cpu) / messages * 1e3))

    benchmark.pedantic(measured, rounds=1, iterations=1)
    lines = ["| strategy (1 KiB messages) | msgs/s median | range | CPU ms/msg |", "|---|---|---|---|"]
    for name, rounds in results.items():
        rates = [rate for rate, _ in rounds]
        lines.append(f"| {name} | {statistics.median(rates):.0f} | {min(rates):.0f}-{max(rates):.0f} "
                     f"| {statistics.median(cpu for _, cpu in rounds):.2f} |")
        benchmark.extra_info[name] = [round(statistics.median(rates)),
                                      round(statistics.median(cpu for _, cpu in rounds), 3)]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    for spool in spools.values():
        spool.close()
    raw.pool.shutdown()


# --- per-message CPU outside the disk --------------------------------------------------------------


def test_encode_envelope(benchmark: Any) -> None:
    benchmark(encode_envelope, ENVELOPE, "1K1CKQVD3QVA72M0079F", 1795936006.606587)


def test_parse_small_file(benchmark: Any, tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queue_id = spool.enqueue(ENVELOPE, MESSAGE)
    fd = os.open(tmp_path / "incoming" / queue_id, os.O_RDONLY)
    parsed = benchmark(parse_file, fd)
    assert parsed.body_length == len(MESSAGE)
    os.close(fd)
