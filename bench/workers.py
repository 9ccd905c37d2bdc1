"""Accepted messages/s of `fastmta serve` with 1 and 2 receive workers, and the choice
between one inherited listening socket and one SO_REUSEPORT socket per worker.

    .venv/bin/python bench/workers.py [--messages 20000] [--connections 50] [--rounds 2]

For each case it starts a server on 127.0.0.1 with a fresh spool in a temporary
directory (fsync on, delivery off), sends the load with `fastmta loadgen --json`
(one process: the client needs a core too), and prints messages/s, p99 latency of
the final 250, and how evenly the workers shared the messages (from the log).

- inherited: the real `fastmta serve --workers N` (master binds once, workers inherit).
- reuseport: this script's own small master binds N sockets with SO_REUSEPORT on one
  port and gives one to each worker (same worker entry point, run_receive_worker).
Results go to bench/README.md ("Process model").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

PYTHON = sys.executable


def start_inherited(workers: int, spool: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    command = [PYTHON, "-m", "fastmta", "serve", "--workers", str(workers),
               "--delivery-workers", "0", "--listen", "127.0.0.1:0", "--spool", str(spool),
               "--hostname", "mx.bench", "--drain-timeout", "5"]
    return _start(command, log)


def start_reuseport(workers: int, spool: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    command = [PYTHON, __file__, "--serve-reuseport", str(workers), "--spool", str(spool)]
    return _start(command, log)


def _start(command: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    with open(log, "wb") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "fastmta ready" in text:
            port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            assert port, text
            return proc, int(port.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server not ready after 30s:\n{log.read_text()}")


def serve_reuseport(workers: int, spool: str) -> int:
    """A minimal master for the comparison: one SO_REUSEPORT socket per worker."""
    from fastmta.config import load_config
    from fastmta.process.logsetup import set_role, setup_logging
    from fastmta.server.worker import run_receive_worker
    from fastmta.spool import Spool

    setup_logging()
    config = load_config(None, {"listen": "127.0.0.1:0", "spool": spool,
                                "hostname": "mx.bench", "workers": workers,
                                "delivery_workers": 0, "drain_timeout": 5})
    Spool(config.spool).close()
    port = 0
    sockets = []
    for _ in range(workers):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        sockets.append(sock)
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    ready_r, ready_w = os.pipe()
    children = []
    for index, sock in enumerate(sockets):
        pid = os.fork()
        if pid == 0:
            set_role(f"receive.{index}")
            os.close(ready_r)
            def ready() -> None:
                os.write(ready_w, b"R")

            code = run_receive_worker(config, [sock], on_ready=ready)
            os._exit(code)
        children.append(pid)
    os.close(ready_w)
    for _ in children:
        os.read(ready_r, 1)
    print("fastmta ready", file=sys.stderr, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


def run_load(port: int, messages: int, connections: int, size: int) -> dict:
    command = [PYTHON, "-m", "fastmta", "loadgen", f"127.0.0.1:{port}", "--json",
               "--messages", str(messages), "--connections", str(connections),
               "--per-connection", "10", "--size", str(size), "--to", "user@localhost"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if not result.stdout.strip():
        raise SystemExit(f"loadgen failed: {result.stderr}")
    return json.loads(result.stdout)


def worker_shares(log: Path) -> list[float]:
    """Fraction of the accepted messages each worker took, largest first."""
    counts = Counter(re.findall(r"(receive\.\d+)\[\d+\] INFO fastmta\.smtpd: [^ ]+: \w+: accepted",
                                log.read_text(errors="replace")))
    total = sum(counts.values()) or 1
    return sorted((count / total for count in counts.values()), reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--modes", default="inherited,reuseport")
    parser.add_argument("--serve-reuseport", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spool", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_reuseport:
        return serve_reuseport(args.serve_reuseport, args.spool)
    starters = {"inherited": start_inherited, "reuseport": start_reuseport}
    print(f"{'mode':<10} {'workers':>7} {'round':>5} {'msgs/s':>8} {'p99 ms':>8} "
          f"{'accepted':>8}  shares")
    for round_number in range(1, args.rounds + 1):
        for mode in args.modes.split(","):
            for workers in (int(text) for text in args.workers.split(",")):
                with tempfile.TemporaryDirectory(prefix="fastmta-bench-") as directory:
                    log = Path(directory) / "server.log"
                    proc, port = starters[mode](workers, Path(directory) / "spool", log)
                    try:
                        report = run_load(port, args.messages, args.connections, args.size)
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(60)
                    shares = " ".join(f"{share:.2f}" for share in worker_shares(log))
                    print(f"{mode:<10} {workers:>7} {round_number:>5} "
                          f"{report['messages_per_s']:>8.0f} {report['latency_ms']['p99']:>8.1f} "
                          f"{report['messages_accepted']:>8}  {shares}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
