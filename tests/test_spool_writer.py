"""The receive-side writer: commit is durable before it returns, batched, and leaves nothing on failure."""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
import stat
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.spool_files import body_of, envelope, files

from fastmta.spool import Envelope, Recipient, Spool, SpoolError


async def receive(spool: Spool, *chunks: bytes) -> str:
    writer = spool.new_message(envelope())
    for chunk in chunks:
        writer.write(chunk)
    await writer.commit()
    return writer.queue_id


def is_directory(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


@pytest.fixture
def spool(tmp_path: Path):
    spool = Spool(tmp_path)
    yield spool
    spool.close()


def test_new_spool_creates_its_directories(tmp_path: Path) -> None:
    Spool(tmp_path / "spool").close()
    assert sorted(os.listdir(tmp_path / "spool")) == ["active", "corrupt", "deferred", "free", "hold",
                                                    "incoming", "retired", "tmp"]


def test_commit_puts_a_complete_file_in_incoming(spool: Spool, tmp_path: Path) -> None:
    received = b"Received: from client.example.org ([192.0.2.7])\r\n"
    queue_id = asyncio.run(receive(spool, received, b"Subject: hi\r\n\r\n", b"hello\r\n"))
    assert files(tmp_path, "incoming") == [queue_id]
    assert files(tmp_path, "tmp") == []
    assert body_of(tmp_path / "incoming" / queue_id) == received + b"Subject: hi\r\n\r\nhello\r\n"
    assert oct((tmp_path / "incoming" / queue_id).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("stop_at", ["written", "synced", "renamed"])
def test_commit_returns_only_after_the_directory_fsync(spool: Spool, tmp_path: Path, stop_at: str) -> None:
    reached, proceed = threading.Event(), threading.Event()

    def hook(point: str, queue_id: str) -> None:
        if point == stop_at:
            reached.set()
            proceed.wait(10)

    spool.pause_hook = hook

    async def scenario() -> None:
        writer = spool.new_message(envelope())
        writer.write(b"hello\r\n")
        task = asyncio.ensure_future(writer.commit())
        await asyncio.get_running_loop().run_in_executor(None, reached.wait, 10)
        await asyncio.sleep(0.05)
        assert not task.done()  # no 250 yet
        in_incoming = files(tmp_path, "incoming") == [writer.queue_id]
        assert in_incoming == (stop_at == "renamed")
        proceed.set()
        await task
        assert files(tmp_path, "incoming") == [writer.queue_id]

    asyncio.run(scenario())


def test_concurrent_commits_share_directory_fsyncs_and_wakeups(spool: Spool, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    counts = {"dir": 0, "file": 0}

    def counting_fsync(fd: int) -> None:
        counts["dir" if is_directory(fd) else "file"] += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        real_call = loop.call_soon_threadsafe

        def counting_call(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return real_call(*args, **kwargs)

        loop.call_soon_threadsafe = counting_call  # type: ignore[method-assign, assignment]
        ids = await asyncio.gather(*(receive(spool, b"message %d\r\n" % i) for i in range(200)))
        assert wakeups == counts["dir"]  # one wakeup per batch, not per message
        return list(ids)

    ids = asyncio.run(scenario())
    assert files(tmp_path, "incoming") == sorted(ids)
    assert len(set(ids)) == 200
    assert counts["file"] == 200
    assert 1 <= counts["dir"] < 100
    assert spool.committed_messages == 200 and spool.committed_batches == counts["dir"]
    for i, queue_id in enumerate(ids):
        assert body_of(tmp_path / "incoming" / queue_id) == b"message %d\r\n" % i


def test_syncfs_mode_commits_durably_too(tmp_path: Path) -> None:
    spool = Spool(tmp_path, sync_mode="syncfs")

    async def scenario() -> list[str]:
        return list(await asyncio.gather(*(receive(spool, b"m%d\r\n" % i) for i in range(30))))

    ids = asyncio.run(scenario())
    spool.close()
    assert files(tmp_path, "incoming") == sorted(ids)
    assert files(tmp_path, "tmp") == []


def failing(errno_code: int, calls_before_failure: int = 0,
            real: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A stand-in for an os function that works `calls_before_failure` times, then fails."""
    calls = 0

    def fake(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > calls_before_failure:
            raise OSError(errno_code, os.strerror(errno_code))
        assert real is not None
        return real(*args)

    return fake


def test_disk_full_during_write_raises_spool_error_and_leaves_nothing(
        spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "writev", failing(errno.ENOSPC))
    with pytest.raises(SpoolError, match=r"No space left on device \(ENOSPC\); free disk space"):
        asyncio.run(receive(spool, b"hello\r\n"))
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "incoming") == []


def test_disk_filling_up_mid_message_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, spill_threshold=4096)
    real_writev = os.writev

    def half_then_full(fd: int, buffers: list[bytes]) -> int:
        if is_directory(fd) or os.fstat(fd).st_size > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        first = bytes(memoryview(buffers[0]))
        return real_writev(fd, [first[: len(first) // 2 + 1]])

    monkeypatch.setattr(os, "writev", half_then_full)
    with pytest.raises(SpoolError, match="ENOSPC"):
        asyncio.run(receive(spool, *(b"x" * 1000 for _ in range(20))))
    spool.close()
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "incoming") == []


def test_io_error_on_file_fsync_raises_spool_error_and_leaves_nothing(
        spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: real_fsync(fd) if is_directory(fd) else failing(errno.EIO)(fd))
    with pytest.raises(SpoolError, match="EIO"):
        asyncio.run(receive(spool, b"hello\r\n"))
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "incoming") == []


def test_io_error_on_directory_fsync_unpublishes_the_batch(
        spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: failing(errno.EIO)(fd) if is_directory(fd) else real_fsync(fd))

    async def scenario() -> list[Any]:
        return list(await asyncio.gather(*(receive(spool, b"m\r\n") for _ in range(5)), return_exceptions=True))

    results = asyncio.run(scenario())
    assert all(isinstance(result, SpoolError) for result in results)
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "incoming") == []


def test_the_committer_survives_a_failed_commit(spool: Spool, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev
    monkeypatch.setattr(os, "writev", failing(errno.ENOSPC))
    with pytest.raises(SpoolError):
        asyncio.run(receive(spool, b"first\r\n"))
    monkeypatch.setattr(os, "writev", real_writev)
    queue_id = asyncio.run(receive(spool, b"second\r\n"))
    assert files(tmp_path, "incoming") == [queue_id]


def test_failed_spill_is_reported_by_commit_not_by_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, spill_threshold=1024)
    monkeypatch.setattr(os, "writev", failing(errno.EDQUOT))
    writer = spool.new_message(envelope())
    for _ in range(10):
        writer.write(b"y" * 500)  # spills, fails, keeps going: the transport drains DATA
    assert writer.buffered == 0
    with pytest.raises(SpoolError, match="EDQUOT"):
        asyncio.run(writer.commit())
    spool.close()
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "incoming") == []


@pytest.mark.parametrize("size", [10, 300_000])
def test_abort_leaves_nothing(spool: Spool, tmp_path: Path, size: int) -> None:
    writer = spool.new_message(envelope())
    writer.write(b"z" * size)
    writer.abort()
    writer.abort()
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "incoming") == []
    with pytest.raises(RuntimeError):
        writer.write(b"more")


def test_large_message_spills_with_bounded_memory(tmp_path: Path) -> None:
    threshold = 256 * 1024
    spool = Spool(tmp_path, spill_threshold=threshold)
    chunk_size, chunks = 64 * 1024, 256  # 16 MiB
    expected_crc = 0

    async def scenario() -> str:
        nonlocal expected_crc
        writer = spool.new_message(envelope())
        tracemalloc.start()
        try:
            for i in range(chunks):
                chunk = bytes([i % 251]) * chunk_size  # a fresh object each time, like the socket
                expected_crc = zlib.crc32(chunk, expected_crc)
                writer.write(chunk)
                assert writer.buffered < threshold
                del chunk
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2 * threshold + 2 * chunk_size  # not 16 MiB
        assert files(tmp_path, "tmp") == [writer.queue_id]  # spilled, not yet visible
        assert files(tmp_path, "incoming") == []
        await writer.commit()
        return writer.queue_id

    queue_id = asyncio.run(scenario())
    spool.close()
    body = body_of(tmp_path / "incoming" / queue_id)
    assert len(body) == chunk_size * chunks and zlib.crc32(body) == expected_crc
    assert files(tmp_path, "tmp") == []


def test_cancelled_commit_still_completes(spool: Spool, tmp_path: Path) -> None:
    async def scenario() -> str:
        writer = spool.new_message(envelope())
        writer.write(b"hello\r\n")
        task = asyncio.ensure_future(writer.commit())
        await asyncio.sleep(0)
        task.cancel()
        writer.abort()  # what a transport does when the client goes away: ignored now
        with pytest.raises(asyncio.CancelledError):
            await task
        return writer.queue_id

    queue_id = asyncio.run(scenario())
    spool.close()  # waits for the commit thread to finish
    assert files(tmp_path, "incoming") == [queue_id]


def test_commit_twice_is_a_programming_error(spool: Spool) -> None:
    writer = spool.new_message(envelope())
    writer.commit_sync()
    with pytest.raises(RuntimeError):
        writer.commit_sync()


def test_enqueue_is_durable_without_an_event_loop(spool: Spool, tmp_path: Path) -> None:
    queue_id = spool.enqueue(Envelope(sender="", recipients=[Recipient("alice@example.org")], protocol="LOCAL"),
                             [b"Subject: Undelivered Mail\r\n", b"\r\n", b"bounce\r\n"])
    assert files(tmp_path, "incoming") == [queue_id]
    assert body_of(tmp_path / "incoming" / queue_id) == b"Subject: Undelivered Mail\r\n\r\nbounce\r\n"


def _commit_in_child(spool: Spool) -> None:
    os._exit(0 if asyncio.run(receive(spool, b"from the child\r\n")) else 1)


def test_a_forked_worker_gets_its_own_commit_thread(spool: Spool, tmp_path: Path) -> None:
    parent_id = asyncio.run(receive(spool, b"from the parent\r\n"))  # the parent's thread exists now
    child = multiprocessing.get_context("fork").Process(target=_commit_in_child, args=(spool,))
    child.start()
    try:
        child.join(30)
        assert child.exitcode == 0  # would hang waiting on the parent's thread otherwise
    finally:
        if child.is_alive():
            child.kill()
    assert len(files(tmp_path, "incoming")) == 2 and parent_id in files(tmp_path, "incoming")
    assert asyncio.run(receive(spool, b"parent again\r\n"))  # the parent's thread still works


def test_commit_after_close_is_refused_cleanly(tmp_path: Path) -> None:
    spool = Spool(tmp_path, spill_threshold=1024)
    writer = spool.new_message(envelope())
    writer.write(b"x" * 4096)  # spilled to tmp/
    other = spool.new_message(envelope())
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        asyncio.run(writer.commit())
    with pytest.raises(SpoolError, match="closed"):
        other.commit_sync()
    assert files(tmp_path, "tmp") == [] and files(tmp_path, "incoming") == []


def test_commits_under_uvloop(spool: Spool, tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[str]:
        return list(await asyncio.gather(*(receive(spool, b"m%d\r\n" % i) for i in range(50))))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        ids = runner.run(scenario())
    assert files(tmp_path, "incoming") == sorted(ids)
