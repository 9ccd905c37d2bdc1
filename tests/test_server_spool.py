"""The hand-off from session to spool, over real sockets: what the client is told
and what is left on disk when the client vanishes or the spool cannot write.

- A client gone mid-DATA leaves nothing in tmp/ or incoming/.
- A client gone after the final dot still gets its message stored (the commit is
  never cut: the message may already be durable).
- A spool write error answers 452 4.3.1, leaves no partial file, and the session
  and the server go on (in-process: a failure injected at each commit step through
  the spool's test hook; in a subprocess: a real EFBIG from RLIMIT_FSIZE).
"""

from __future__ import annotations

import errno

import pytest
from helpers.server import (
    message_bytes,
    queue_id_of,
    split_received,
    wait_until,
)

ENVELOPE = b"MAIL FROM:<sender@example.com>\r\nRCPT TO:<user@localhost>\r\nDATA\r\n"


def start_data(raw) -> None:
    raw.greet()
    raw.send(ENVELOPE)
    assert [reply[:3] for reply in raw.replies(3)] == [b"250", b"250", b"354"]


def send_message(raw, content: bytes) -> bytes:
    raw.send(ENVELOPE)
    assert [reply[:3] for reply in raw.replies(3)] == [b"250", b"250", b"354"]
    raw.send(content + b".\r\n")
    return raw.reply()


@pytest.mark.parametrize("size", [100, 600_000], ids=["in-memory", "spilled"])
def test_client_gone_mid_data_leaves_nothing(receive_server, size: int) -> None:
    server = receive_server()
    raw = server.raw()
    start_data(raw)
    raw.send(b"Subject: cut\r\n\r\n" + b"a" * size)
    if size > 256 * 1024:  # past the spill threshold: make sure a tmp/ file exists first
        wait_until(lambda: server.files("tmp"), what="the content spilled to tmp/")
    raw.close()
    server.assert_no_leftovers()
    wait_until(lambda: server.session_count() == 0, what="the session to end")


def test_client_gone_after_the_final_dot_still_gets_stored(receive_server) -> None:
    server = receive_server()
    raw = server.raw()
    start_data(raw)
    raw.send(message_bytes("fire and forget") + b".\r\n")
    raw.close()  # without reading the 250
    [queue_id] = wait_until(server.queued_ids, what="the message in incoming/")
    assert split_received(server.read(queue_id).content)[1] == message_bytes("fire and forget")
    assert server.files("tmp") == []


@pytest.mark.parametrize("point", ["written", "synced", "dir_synced"])
def test_spool_write_failure_answers_452_and_the_session_goes_on(receive_server, point: str) -> None:
    server = receive_server()
    failures: list[str] = []

    def disk_full(where: str, queue_id: str) -> None:
        # Runs in the spool's commit thread, where the real write/fsync would fail.
        if where == point and not failures:
            failures.append(queue_id)
            raise OSError(errno.ENOSPC, "No space left on device")

    server.spool.pause_hook = disk_full
    with server.raw() as raw:
        start_data(raw)
        raw.send(message_bytes("doomed") + b".\r\n")
        assert raw.reply().startswith(b"452 4.3.1 ")
        assert failures, "the injected failure was not reached"
        assert server.files("tmp") == [] and server.files("incoming") == []
        queue_id = queue_id_of(send_message(raw, message_bytes("retried")))  # same session
        assert failures[0] != queue_id
    assert server.queued_ids() == [queue_id]
    with server.smtp() as client:  # and the server takes new connections
        assert client.noop()[0] == 250


@pytest.mark.slow
def test_real_write_error_in_a_server_process(server_process) -> None:
    # Files the server writes may not grow past 1 MiB: a real EFBIG from write().
    server = server_process(file_size_limit=1024 * 1024)
    line = b"b" * 998 + b"\r\n"
    with server.raw() as raw:
        start_data(raw)
        raw.send(b"Subject: too big for the disk\r\n\r\n" + line * 2000)  # 2 MB
        raw.send(b".\r\n")
        assert raw.reply().startswith(b"452 4.3.1 ")
        queue_id = queue_id_of(send_message(raw, message_bytes("fits")))
    assert server.queued_ids() == [queue_id]
    assert server.files("tmp") == []
    assert server.alive()
    with server.smtp() as client:
        assert client.noop()[0] == 250
    assert "File too large" in server.log()  # the operator is told why


@pytest.mark.parametrize("flags", [("--spool-sync", "syncfs"), ("--spool-commit-threads", "3")],
                         ids=["syncfs", "three-commit-threads"])
def test_the_other_commit_settings_store_every_message(server_process, flags: tuple[str, ...]) -> None:
    # Several sessions at once, so the commit threads get batches of more than one.
    server = server_process(*flags)
    clients = [server.raw() for _ in range(6)]
    queue_ids = []
    try:
        for raw in clients:
            raw.greet()
            raw.send(ENVELOPE)
        for raw in clients:
            assert [reply[:3] for reply in raw.replies(3)] == [b"250", b"250", b"354"]
        for index, raw in enumerate(clients):
            raw.send(message_bytes(f"message {index}") + b".\r\n")
        queue_ids = [queue_id_of(raw.reply()) for raw in clients]
    finally:
        for raw in clients:
            raw.close()
    assert sorted(server.queued_ids()) == sorted(queue_ids)
    assert server.files("tmp") == []
    stored = {split_received(server.read(queue_id).content)[1] for queue_id in queue_ids}
    assert stored == {message_bytes(f"message {index}") for index in range(6)}
