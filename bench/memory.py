"""Resident memory of fastmta's receive workers under the two loads issue 6 bounds:
many idle connections, and many large messages arriving at once.

    .venv/bin/python bench/memory.py [--idle 1000] [--large 100] [--size-mib 10] [--workers 2]

It starts `fastmta serve` (default worker count unless --workers, fsync on, delivery
off, spool in a temporary directory), then:

1. opens `--idle` connections, each greeted and past EHLO, and leaves them idle;
   reads every receive worker's VmRSS while they are open;
2. closes them, then sends `--large` messages of `--size-mib` MiB at once (one
   connection each, all in DATA together) and reads every worker's VmHWM (peak
   resident size) once all have their 250; checks they are all in incoming/.

Memory comes from /proc/PID/status of the processes named `fastmta-receive`.
Results go to bench/README.md ("Memory").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import tree_pids

MIB = 1024 * 1024


def status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, f"no {field} in /proc/{pid}/status"
    return int(match.group(1))


def receive_workers(master: int) -> list[int]:
    return [pid for pid in tree_pids(master)
            if Path(f"/proc/{pid}/comm").read_text().strip() == "fastmta-receive"]


def start_server(spool: Path, log: Path, workers: int | None, max_size: int) -> tuple[subprocess.Popen[bytes], int]:
    command = [sys.executable, "-m", "fastmta", "serve", "--listen", "127.0.0.1:0",
               "--spool", str(spool), "--hostname", "mx.bench", "--delivery-workers", "0",
               "--max-message-size", str(max_size), "--drain-timeout", "5"]
    if workers is not None:
        command += ["--workers", str(workers)]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        if "fastmta ready" in text and port:
            return proc, int(port.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"the server exited early; its log:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server was not ready after 30 s; its log:\n{log.read_text()}")


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    reply = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        reply += line
        if line[3:4] != b"-":
            return reply


async def open_idle(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await read_reply(reader)).startswith(b"220")
    writer.write(b"EHLO idle.bench\r\n")
    assert (await read_reply(reader)).startswith(b"250")
    return reader, writer


def body(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return b"Subject: large\r\n\r\n" + line * (size // len(line))


async def send_large(port: int, content: bytes, started: asyncio.Event) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await read_reply(reader)).startswith(b"220")
        writer.write(b"EHLO large.bench\r\n")
        await read_reply(reader)
        writer.write(b"MAIL FROM:<load@bench.test>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n")
        for expected in (b"250", b"250", b"354"):
            reply = await read_reply(reader)
            assert reply.startswith(expected), reply
        await started.wait()  # every session is in DATA before the bodies go out
        view = memoryview(content)
        for offset in range(0, len(view), 256 * 1024):
            writer.write(view[offset:offset + 256 * 1024])
            await writer.drain()
        writer.write(b".\r\nQUIT\r\n")
        reply = await read_reply(reader)
        await read_reply(reader)
        return reply
    finally:
        writer.close()


async def measure(port: int, master: int, idle: int, large: int, size: int) -> dict[str, object]:
    workers = receive_workers(master)
    result: dict[str, object] = {"workers": len(workers),
                                 "start_rss_kib": [status_kib(pid, "VmRSS") for pid in workers]}
    print(f"{len(workers)} receive workers, RSS at start {result['start_rss_kib']} KiB", flush=True)

    connections = []
    for index in range(idle):
        connections.append(await open_idle(port))
        if (index + 1) % 200 == 0:
            print(f"  idle connections open: {index + 1}/{idle}", flush=True)
    await asyncio.sleep(1.0)
    result["idle_rss_kib"] = [status_kib(pid, "VmRSS") for pid in workers]
    print(f"with {idle} idle connections: RSS {result['idle_rss_kib']} KiB", flush=True)
    for _, writer in connections:
        writer.close()
    await asyncio.sleep(1.0)

    content = body(size)
    started = asyncio.Event()
    tasks = [asyncio.create_task(send_large(port, content, started)) for _ in range(large)]
    await asyncio.sleep(2.0)
    started.set()
    began = time.monotonic()
    replies = await asyncio.gather(*tasks)
    accepted = sum(reply.startswith(b"250") for reply in replies)
    result["large_accepted"] = accepted
    result["large_seconds"] = round(time.monotonic() - began, 1)
    result["peak_rss_kib"] = [status_kib(pid, "VmHWM") for pid in workers]
    result["end_rss_kib"] = [status_kib(pid, "VmRSS") for pid in workers]
    print(f"{large} x {size // MIB} MiB at once: {accepted} accepted in {result['large_seconds']} s; "
          f"peak RSS {result['peak_rss_kib']} KiB, now {result['end_rss_kib']} KiB", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--idle", type=int, default=1000, help="idle connections held open")
    parser.add_argument("--large", type=int, default=100, help="large messages sent at once")
    parser.add_argument("--size-mib", type=int, default=10, help="size of each large message")
    parser.add_argument("--workers", type=int, default=None,
                        help="receive workers (default: fastmta's, one per core)")
    args = parser.parse_args(argv)
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="fastmta-memory-") as work:
        spool, log = Path(work) / "spool", Path(work) / "server.log"
        proc, port = start_server(spool, log, args.workers, size + MIB)
        try:
            result = asyncio.run(measure(port, proc.pid, args.idle, args.large, size))
        finally:
            proc.terminate()
            proc.wait(30)
        queued = len(os.listdir(spool / "incoming"))
    print(f"messages in incoming/: {queued}")
    if result["large_accepted"] != args.large or queued != args.large:
        print("not every large message was accepted and stored; see the server log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
