"""The log line format, batching per loop iteration, and the receive path's direct lines.

Handlers are built on pipes here (setup_logging changes the logging module for the
whole process, so it only runs in subprocesses); the pre-forked server is checked
end to end at the bottom.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mta_process import MTAProcess, wait_until

from fastmta.process import logsetup
from fastmta.process.logsetup import LineHandler

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\S+)\[(\d+)\] ([A-Z]+) (\S+): (.*)")


class Pipe:
    """A LineHandler writing into a pipe, and the write(2) calls it made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        read_fd, write_fd = os.pipe()
        self.reader = os.fdopen(read_fd, "rb")
        self.stream = os.fdopen(write_fd, "w")
        self.handler = LineHandler(self.stream)
        self.writes: list[bytes] = []
        real_write = os.write

        def counting_write(fd: int, data: bytes) -> int:
            if fd == write_fd:
                self.writes.append(bytes(data))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", counting_write)

    def lines(self) -> list[str]:
        return b"".join(self.writes).decode().splitlines()

    def close(self) -> None:
        self.stream.close()
        self.reader.close()


@pytest.fixture
def pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipe]:
    pipe = Pipe(monkeypatch)
    yield pipe
    pipe.close()


@pytest.fixture
def logger(pipe: Pipe) -> Iterator[logging.Logger]:
    logger = logging.getLogger("fastmta.test-logsetup")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(pipe.handler)
    yield logger
    logger.removeHandler(pipe.handler)


def test_a_line_names_time_role_pid_level_and_logger(pipe: Pipe, logger: logging.Logger) -> None:
    logger.info("%s: %d messages", "client", 3)
    [line] = pipe.lines()
    match = LINE.fullmatch(line)
    assert match is not None, line
    assert match.groups() == (logsetup.role(), str(os.getpid()), "INFO", "fastmta.test-logsetup",
                              "client: 3 messages")


def test_an_exception_comes_with_its_traceback(pipe: Pipe, logger: logging.Logger) -> None:
    try:
        raise ValueError("the cause")
    except ValueError:
        logger.exception("it failed")
    text = "\n".join(pipe.lines())
    assert " ERROR fastmta.test-logsetup: it failed\nTraceback (most recent call last):" in text
    assert text.endswith("ValueError: the cause")


def test_lines_of_one_loop_iteration_leave_in_one_write(pipe: Pipe, logger: logging.Logger) -> None:
    async def scenario() -> None:
        pipe.handler.batch_on(asyncio.get_running_loop())
        for number in range(3):
            logger.info("line %d", number)
        assert pipe.writes == []  # not yet: at the end of this iteration
        await asyncio.sleep(0)
        assert len(pipe.writes) == 1
        logger.warning("next iteration")
        pipe.handler.batch_on(None)  # stops batching: writes what is pending
        assert len(pipe.writes) == 2

    asyncio.run(scenario())
    assert [line.split(": ", 1)[1] for line in pipe.lines()] == [
        "line 0", "line 1", "line 2", "next iteration"]


def test_a_batch_is_written_in_whole_lines_of_at_most_pipe_buf(pipe: Pipe, logger: logging.Logger) -> None:
    async def scenario() -> None:
        pipe.handler.batch_on(asyncio.get_running_loop())
        for number in range(200):
            logger.info("%03d %s", number, "x" * 100)
        logger.info("%s", "y" * 10000)  # longer than PIPE_BUF: written alone
        await asyncio.sleep(0)
        pipe.handler.batch_on(None)

    asyncio.run(scenario())
    assert len(pipe.writes) > 5
    for data in pipe.writes:
        assert data.endswith(b"\n")
        assert len(data) <= select.PIPE_BUF or data.count(b"\n") == 1
    assert [line.split(": ", 1)[1][:3] for line in pipe.lines()[:200]] == [
        f"{number:03d}" for number in range(200)]


def test_lines_from_other_threads_are_written_at_once(pipe: Pipe, logger: logging.Logger) -> None:
    async def scenario() -> None:
        pipe.handler.batch_on(asyncio.get_running_loop())
        thread = threading.Thread(target=logger.error, args=("from the commit thread",))
        thread.start()
        thread.join()
        assert len(pipe.writes) == 1
        pipe.handler.batch_on(None)

    asyncio.run(scenario())
    assert pipe.lines()[0].endswith(" ERROR fastmta.test-logsetup: from the commit thread")


def test_info_writes_what_logger_info_writes(pipe: Pipe, logger: logging.Logger,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsetup, "_handler", pipe.handler)
    logger.propagate = False

    async def scenario() -> None:
        pipe.handler.batch_on(asyncio.get_running_loop())
        logsetup.info(logger, "1.2.3.4:5: QUEUEID: accepted from=<a@b> to=<c@d> size=10")
        logger.info("%s", "1.2.3.4:5: QUEUEID: accepted from=<a@b> to=<c@d> size=10")
        await asyncio.sleep(0)
        pipe.handler.batch_on(None)

    asyncio.run(scenario())
    direct, through_logging = (line.split(" ", 2)[2] for line in pipe.lines())  # without the time
    assert direct == through_logging
    assert len(pipe.writes) == 1


def test_info_goes_through_logging_when_another_handler_listens(
        pipe: Pipe, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsetup, "_handler", pipe.handler)
    records: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(other)
    try:
        async def scenario() -> None:
            pipe.handler.batch_on(asyncio.get_running_loop())
            logsetup.info(logger, "seen by both")
            await asyncio.sleep(0)
            pipe.handler.batch_on(None)

        asyncio.run(scenario())
    finally:
        logger.removeHandler(other)
    assert [record.getMessage() for record in records] == ["seen by both"]
    assert pipe.lines()[0].endswith(" INFO fastmta.test-logsetup: seen by both")


_FORK = """
import asyncio, logging, os, sys
from fastmta.process import logsetup
logsetup.setup_logging()
log = logging.getLogger("fastmta.fork")

async def main():
    logsetup.batch_writes(asyncio.get_running_loop())
    log.info("parent before fork")
    pid = os.fork()
    if pid == 0:
        logsetup.set_role("child")
        log.info("child line")
        logsetup.flush()
        os._exit(0)
    os.waitpid(pid, 0)
    logsetup.batch_writes(None)

asyncio.run(main())
"""


def test_a_forked_child_never_writes_its_parents_pending_lines() -> None:
    result = subprocess.run([sys.executable, "-c", _FORK], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert [LINE.fullmatch(line).group(1, 5) for line in lines] == [  # type: ignore[union-attr]
        ("child", "child line"), ("master", "parent before fork")]


def test_the_prefork_server_logs_a_line_per_connection_and_per_message(tmp_path: Path) -> None:
    server = MTAProcess(tmp_path, "--workers", "1", "--delivery-workers", "0")
    try:
        server.start()
        ids = []
        for _ in range(3):
            with server.smtp() as client:
                ids += [server.send(client), server.send(client)]
        wait_until(lambda: server.log().count(" disconnect ") == 3, 10, what="3 disconnect lines")
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill_tree()
    log = server.log()
    accepted = re.findall(r" receive\.0\[\d+\] INFO fastmta\.smtpd: 127\.0\.0\.1:\d+: (\w+): "
                          r"accepted from=<sender@example\.com> to=<user@localhost> size=\d+\n", log)
    assert accepted == ids
    assert len(re.findall(r" receive\.0\[\d+\] INFO fastmta\.smtpd: 127\.0\.0\.1:\d+: disconnect "
                          r"helo=\S+ messages=2 rejected=0 duration=\d+\.\d{3}s reason=quit\n", log)) == 3
    for line in log.splitlines():
        assert LINE.fullmatch(line), line
