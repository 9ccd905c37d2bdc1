"""The receive side's commit without a coroutine (`commit_then`), several commit threads,
several event loops, and the batch kernel's failures seen through the writer.

(tests/test_spool_writer.py covers `await commit()` and the Python path with injected
faults; here the faults are real, so the compiled kernel meets them too.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers.spool_files import body_of, envelope, files

from fastmta.spool import MessageWriter, Spool, SpoolError


async def commit_all(spool: Spool, bodies: list[bytes]) -> list[tuple[MessageWriter, SpoolError | None]]:
    """commit_then every body at once; the callbacks' (writer, error) in completion order."""
    loop = asyncio.get_running_loop()
    done: list[tuple[MessageWriter, SpoolError | None]] = []
    finished = loop.create_future()

    def callback(writer: MessageWriter, error: SpoolError | None) -> None:
        assert threading.current_thread() is threading.main_thread()  # on the loop's thread
        done.append((writer, error))
        if len(done) == len(bodies):
            finished.set_result(None)

    for index, body in enumerate(bodies):
        writer = spool.new_message(envelope())
        writer.write(body)
        writer.commit_then(callback, loop if index % 2 else None)  # the loop given or looked up
    assert done == []  # never called from inside commit_then
    await asyncio.wait_for(finished, 30)
    return done


def test_commit_then_calls_back_once_the_message_is_in_incoming(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    seen: list[list[str]] = []

    async def scenario() -> list[tuple[MessageWriter, SpoolError | None]]:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        writer = spool.new_message(envelope())
        writer.write(b"Subject: hi\r\n\r\nhello\r\n")

        def callback(committed: MessageWriter, error: SpoolError | None) -> None:
            seen.append(files(tmp_path, "incoming"))
            finished.set_result([(committed, error)])

        writer.commit_then(callback)
        return await finished

    [(writer, error)] = asyncio.run(scenario())
    spool.close()
    assert error is None
    assert seen == [[writer.queue_id]]
    assert body_of(tmp_path / "incoming" / writer.queue_id) == b"Subject: hi\r\n\r\nhello\r\n"
    with pytest.raises(RuntimeError):
        writer.write(b"more")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_concurrent_commits_on_several_commit_threads(tmp_path: Path, threads: int) -> None:
    spool = Spool(tmp_path, fsync_threads=threads)
    bodies = [b"message %d\r\n" % i for i in range(120)]
    done = asyncio.run(commit_all(spool, bodies))
    spool.close()  # joins every commit thread
    assert all(error is None for _, error in done)
    by_id = {writer.queue_id: writer for writer, _ in done}
    assert files(tmp_path, "incoming") == sorted(by_id) and files(tmp_path, "tmp") == []
    assert spool.committed_messages == 120 and 1 <= spool.committed_batches <= 120
    assert not [t for t in threading.enumerate() if t.name.startswith("fastmta-spool-commit")]


def test_a_spilled_message_is_committed_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path, spill_threshold=4096)
    chunks = [bytes([65 + i % 26]) * 1000 for i in range(50)]

    async def scenario() -> MessageWriter:
        writer = spool.new_message(envelope())
        for chunk in chunks:
            writer.write(chunk)
        assert files(tmp_path, "tmp") == [writer.queue_id]  # spilled
        await writer.commit()
        return writer

    writer = asyncio.run(scenario())
    spool.close()
    assert body_of(tmp_path / "incoming" / writer.queue_id) == b"".join(chunks)


def test_commits_from_loops_in_several_threads(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    ids: list[str] = []
    errors: list[BaseException] = []

    def run_loop(index: int) -> None:
        async def scenario() -> None:
            writers = [spool.new_message(envelope()) for _ in range(20)]
            for number, writer in enumerate(writers):
                writer.write(b"loop %d message %d\r\n" % (index, number))
            await asyncio.gather(*(writer.commit() for writer in writers))
            ids.extend(writer.queue_id for writer in writers)

        try:
            asyncio.run(scenario())
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=run_loop, args=(index,)) for index in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    spool.close()
    assert errors == []
    assert len(ids) == 80 and files(tmp_path, "incoming") == sorted(ids)


def test_commit_then_after_close_calls_back_with_the_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.new_message(envelope())
    writer.write(b"too late\r\n")
    spool.close()

    async def scenario() -> SpoolError | None:
        future = asyncio.get_running_loop().create_future()
        writer.commit_then(lambda _, error: future.set_result(error))
        return await future

    error = asyncio.run(scenario())
    assert isinstance(error, SpoolError) and "closed" in str(error)
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "incoming") == []


_TOO_BIG = """
import asyncio, os, resource, signal, sys
from fastmta.spool import Envelope, Recipient, Spool, SpoolError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
spool = Spool(sys.argv[1])
env = Envelope(sender="a@example.org", recipients=[Recipient("b@example.com")])

async def commit(body):
    writer = spool.new_message(env)
    writer.write(body)
    try:
        await writer.commit()
        return "ok"
    except SpoolError as exc:
        return str(exc)

async def main():
    return await asyncio.gather(commit(b"x" * 40000), commit(b"small\\r\\n"))

for result in asyncio.run(main()):
    print(result)
spool.close()
"""


@pytest.mark.parametrize("backend_name", ["cython", "python"])
def test_a_real_write_error_fails_that_message_only(tmp_path: Path, backend_name: str) -> None:
    env = {**os.environ, "FASTMTA_PURE_PYTHON": "1" if backend_name == "python" else "0"}
    result = subprocess.run([sys.executable, "-c", _TOO_BIG, str(tmp_path)], capture_output=True,
                            text=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    too_big, small = result.stdout.splitlines()
    assert "File too large (EFBIG)" in too_big and "the message was not accepted" in too_big
    assert small == "ok"
    assert files(tmp_path, "tmp") == [] and len(files(tmp_path, "incoming")) == 1
