"""commit_files: the spool's batch commit, on both kernel backends, with real files and faults.

Every fault here is a real one (an existing file, a missing directory, a closed
descriptor, a file size limit), since the compiled kernel makes its system calls
itself and cannot be fooled by replacing os functions.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture
def spool_dirs(tmp_path: Path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "incoming").mkdir()
    fd = os.open(tmp_path / "incoming", os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


def job(root: Path, name: str, parts: list[bytes], fd: int = -1,
        head: bytes | None = None) -> tuple[int, bytes, bytes, list[bytes], bytes | None]:
    return (fd, os.fsencode(root / "tmp" / name), os.fsencode(root / "incoming" / name), parts, head)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def test_a_batch_is_written_renamed_and_closed(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    jobs = [job(root, f"m{i}", [b"head %d\n" % i, b"", b"body " * i, b"end\n"]) for i in range(5)]
    results = backend.commit_files(jobs, dir_fd)
    assert results == [(0, backend.COMMITTED)] * 5
    assert os.listdir(root / "tmp") == []
    for i in range(5):
        path = root / "incoming" / f"m{i}"
        assert path.read_bytes() == b"head %d\n" % i + b"body " * i + b"end\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_open_file_gets_the_rest_then_its_head_and_is_closed(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    fd = os.open(root / "tmp" / "spilled", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"PREAMBLE-0\nfirst part, written before the commit\n")
    results = backend.commit_files([job(root, "spilled", [b"the rest\n"], fd=fd, head=b"PREAMBLE-9")],
                                   dir_fd)
    assert results == [(0, backend.COMMITTED)]
    assert not is_open(fd)
    assert (root / "incoming" / "spilled").read_bytes() == (
        b"PREAMBLE-9\nfirst part, written before the commit\nthe rest\n")


def test_more_parts_than_one_writev_takes(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    parts = [b"%05d," % i for i in range(3000)]  # past Linux's 1024 iovecs per call
    assert backend.commit_files([job(root, "many", parts)], dir_fd) == [(0, backend.COMMITTED)]
    assert (root / "incoming" / "many").read_bytes() == b"".join(parts)


def test_syncfs_mode_commits_the_batch_too(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    jobs = [job(root, f"s{i}", [b"x" * 100]) for i in range(3)]
    assert backend.commit_files(jobs, dir_fd, True) == [(0, backend.COMMITTED)] * 3
    assert sorted(os.listdir(root / "incoming")) == ["s0", "s1", "s2"]


def test_a_file_that_cannot_be_created_fails_alone(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    (root / "tmp" / "taken").write_bytes(b"someone else's")  # O_EXCL refuses it
    results = backend.commit_files([job(root, "taken", [b"mine"]), job(root, "fine", [b"ok"])], dir_fd)
    assert results == [(errno.EEXIST, backend.NOT_CREATED), (0, backend.COMMITTED)]
    assert (root / "tmp" / "taken").read_bytes() == b"someone else's"
    assert os.listdir(root / "incoming") == ["fine"]


def test_a_failed_rename_leaves_the_file_in_tmp(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    lost = (-1, os.fsencode(root / "tmp" / "lost"), os.fsencode(root / "gone" / "lost"), [b"data"], None)
    results = backend.commit_files([lost, job(root, "fine", [b"ok"])], dir_fd)
    assert results == [(errno.ENOENT, backend.IN_TMP), (0, backend.COMMITTED)]
    assert (root / "tmp" / "lost").read_bytes() == b"data"  # the caller removes it
    assert os.listdir(root / "incoming") == ["fine"]


def test_a_failed_directory_fsync_fails_every_renamed_file(backend, spool_dirs) -> None:
    root, _ = spool_dirs
    closed = os.open(root / "incoming", os.O_RDONLY | os.O_DIRECTORY)
    os.close(closed)  # fsync of it fails with EBADF, after the renames
    results = backend.commit_files([job(root, "a", [b"1"]), job(root, "b", [b"2"])], closed)
    assert results == [(errno.EBADF, backend.PUBLISHED)] * 2
    assert sorted(os.listdir(root / "incoming")) == ["a", "b"]  # the caller unlinks them


def test_a_malformed_job_is_refused_before_any_system_call(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    fd = os.open(root / "tmp" / "open", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for bad in ([job(root, "x", ["text, not bytes"])],  # type: ignore[list-item]
                    [job(root, "y", [b"ok"], head="text")],  # type: ignore[arg-type]
                    [(fd, "str path", b"p", [], None)],
                    [[fd, b"p", b"q", [], None]]):
            with pytest.raises(TypeError):
                backend.commit_files([job(root, "first", [b"1"]), *bad], dir_fd)
        assert is_open(fd)  # nothing was touched
        assert os.listdir(root / "incoming") == [] and os.listdir(root / "tmp") == ["open"]
    finally:
        os.close(fd)


def test_nothing_to_commit(backend, spool_dirs) -> None:
    assert backend.commit_files([], spool_dirs[1]) == []


_FILE_TOO_BIG = """
import os, resource, signal, sys
from fastmta import kernels
backend = kernels.load_backend(sys.argv[1])
root, dir_fd = sys.argv[2], os.open(sys.argv[2] + "/incoming", os.O_RDONLY | os.O_DIRECTORY)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
jobs = [(-1, os.fsencode(f"{root}/tmp/{name}"), os.fsencode(f"{root}/incoming/{name}"), [data], None)
        for name, data in (("big", b"x" * 10000), ("small", b"y" * 100))]
print(backend.commit_files(jobs, dir_fd))
"""


def test_a_write_past_the_file_size_limit_fails_that_file(backend, spool_dirs) -> None:
    root, _ = spool_dirs
    result = subprocess.run([sys.executable, "-c", _FILE_TOO_BIG, backend.BACKEND, str(root)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"[({errno.EFBIG}, {backend.IN_TMP}), (0, {backend.COMMITTED})]"
    assert os.listdir(root / "incoming") == ["small"]
    assert (root / "tmp" / "big").stat().st_size == 4096  # torn, and never published


# ---------------------------------------------------------------- parity
def batches(max_parts: int) -> st.SearchStrategy[list[tuple[list[bytes], bytes | None, bool]]]:
    """Up to six messages: (parts, head, spilled), as batch_jobs takes them."""
    return st.lists(st.tuples(st.lists(st.binary(max_size=300), max_size=max_parts),
                              st.one_of(st.none(), st.binary(min_size=1, max_size=20)),
                              st.booleans()),
                    min_size=1, max_size=6)


def batch_jobs(root: Path, messages: list[tuple[list[bytes], bytes | None, bool]]) -> list:
    """The jobs of a parity batch: per message (parts, head, spilled); a spilled one is
    already open with a first part written, and gets its head."""
    jobs = []
    for index, (parts, head, spilled) in enumerate(messages):
        fd = -1
        if spilled:
            fd = os.open(root / "tmp" / f"m{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"spilled part %d\n" % index)
        jobs.append(job(root, f"m{index}", parts, fd=fd, head=head if spilled else None))
    return jobs


@settings(max_examples=60, deadline=None)
@given(
    messages=batches(max_parts=12),
    use_syncfs=st.booleans(),
)
def test_compiled_and_pure_commits_leave_the_same_files(tmp_path_factory, messages, use_syncfs) -> None:
    """Any batch (fresh files and already-open ones with a head) gives the same
    results and the same bytes in incoming/ on both backends."""
    from fastmta import kernels

    outcomes = []
    for name in ("cython", "python"):
        backend = kernels.load_backend(name)
        root = tmp_path_factory.mktemp(name)
        (root / "tmp").mkdir()
        (root / "incoming").mkdir()
        dir_fd = os.open(root / "incoming", os.O_RDONLY | os.O_DIRECTORY)
        try:
            jobs = batch_jobs(root, messages)
            results = backend.commit_files(jobs, dir_fd, use_syncfs)
        finally:
            os.close(dir_fd)
        files = {path.name: path.read_bytes() for path in (root / "incoming").iterdir()}
        outcomes.append((results, files, os.listdir(root / "tmp")))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == [(0, 0)] * len(messages)


# ---------------------------------------------------------------- reuse of kept files
def kept_file(root: Path, name: str, data: bytes) -> bytes:
    """A file kept for reuse (as the spool's free/ holds them): its path, as the kernel takes it."""
    (root / "free").mkdir(exist_ok=True)
    path = root / "free" / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return os.fsencode(path)


@pytest.mark.parametrize("old", [b"old content, longer than the new one\n" * 200, b"tiny"],
                         ids=["old-longer", "old-shorter"])
def test_a_reused_file_keeps_its_inode_and_holds_only_the_new_bytes(backend, spool_dirs, old) -> None:
    root, dir_fd = spool_dirs
    reuse = [kept_file(root, "f1", old)]
    inode = os.stat(reuse[0]).st_ino
    parts = [b"FASTMTA new message\n", b"", b"body " * 50]
    assert backend.commit_files([job(root, "m", parts)], dir_fd, False, reuse) == [(0, backend.COMMITTED)]
    path = root / "incoming" / "m"
    assert path.stat().st_ino == inode
    assert path.read_bytes() == b"".join(parts)  # no tail of the old content
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert reuse == [] and os.listdir(root / "free") == [] and os.listdir(root / "tmp") == []


def test_a_kept_file_never_replaces_a_file_already_at_the_tmp_path(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    (root / "tmp" / "taken").write_bytes(b"someone else's")
    reuse = [kept_file(root, "f1", b"old")]
    results = backend.commit_files([job(root, "taken", [b"mine"])], dir_fd, False, reuse)
    assert results == [(errno.EEXIST, backend.NOT_CREATED)]  # as O_EXCL without reuse
    assert (root / "tmp" / "taken").read_bytes() == b"someone else's"
    assert os.listdir(root / "free") == ["f1"] and os.listdir(root / "incoming") == []


def test_a_reused_file_can_be_cut_to_nothing(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    reuse = [kept_file(root, "f1", b"x" * 10000)]
    assert backend.commit_files([job(root, "empty", [])], dir_fd, False, reuse) == [(0, backend.COMMITTED)]
    assert (root / "incoming" / "empty").read_bytes() == b""


def test_missing_reuse_paths_are_skipped_and_dropped_from_the_list(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    taken, spare = kept_file(root, "taken", b"old"), kept_file(root, "spare", b"old")
    gone = [os.fsencode(root / "free" / name) for name in ("gone1", "gone2")]  # another worker took them
    reuse = [*gone, taken, spare]
    inode = os.stat(taken).st_ino
    assert backend.commit_files([job(root, "m", [b"new"])], dir_fd, False, reuse) == [(0, backend.COMMITTED)]
    assert (root / "incoming" / "m").stat().st_ino == inode
    assert reuse == [spare]  # the untried path stays, for the caller to give back
    assert os.listdir(root / "free") == ["spare"]


def test_files_are_created_once_the_reuse_list_runs_out(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    reuse = [kept_file(root, "only", b"old" * 100)]
    inode = os.stat(reuse[0]).st_ino
    jobs = [job(root, f"m{i}", [b"message %d\n" % i]) for i in range(3)]
    assert backend.commit_files(jobs, dir_fd, False, reuse) == [(0, backend.COMMITTED)] * 3
    inodes = [(root / "incoming" / f"m{i}").stat().st_ino for i in range(3)]
    assert inodes[0] == inode and inode not in inodes[1:]
    for i in range(3):
        path = root / "incoming" / f"m{i}"
        assert path.read_bytes() == b"message %d\n" % i
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert reuse == []


def test_an_empty_reuse_list_creates_files_as_without_one(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    reuse: list[bytes] = []
    assert backend.commit_files([job(root, "m", [b"new"])], dir_fd, False, reuse) == [(0, backend.COMMITTED)]
    assert (root / "incoming" / "m").read_bytes() == b"new" and reuse == []


def test_a_spilled_job_never_takes_a_reuse_path(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    first, second = kept_file(root, "first", b"old" * 100), kept_file(root, "second", b"old")
    first_inode = os.stat(first).st_ino
    fd = os.open(root / "tmp" / "spilled", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    spilled_inode = os.fstat(fd).st_ino
    os.write(fd, b"HEAD-0\nspilled part\n")
    reuse = [first, second]
    jobs = [job(root, "spilled", [b"rest\n"], fd=fd, head=b"HEAD-9"), job(root, "fresh", [b"fresh\n"])]
    assert backend.commit_files(jobs, dir_fd, False, reuse) == [(0, backend.COMMITTED)] * 2
    assert not is_open(fd)
    assert (root / "incoming" / "spilled").stat().st_ino == spilled_inode
    assert (root / "incoming" / "spilled").read_bytes() == b"HEAD-9\nspilled part\nrest\n"
    assert (root / "incoming" / "fresh").stat().st_ino == first_inode
    assert (root / "incoming" / "fresh").read_bytes() == b"fresh\n"
    assert reuse == [second] and os.listdir(root / "free") == ["second"]


def test_a_bad_reuse_list_is_refused_before_any_system_call(backend, spool_dirs) -> None:
    root, dir_fd = spool_dirs
    kept = kept_file(root, "kept", b"old")
    for bad in ((kept,), [kept, "text, not bytes"], [kept, bytearray(b"path")], [kept, None], kept):
        with pytest.raises(TypeError):
            backend.commit_files([job(root, "m", [b"new"])], dir_fd, False, bad)  # type: ignore[arg-type]
        if isinstance(bad, list):
            assert bad[0] == kept and len(bad) == 2  # not consumed
    assert os.listdir(root / "free") == ["kept"]  # nothing renamed
    assert os.listdir(root / "tmp") == [] and os.listdir(root / "incoming") == []


@settings(max_examples=60, deadline=None)
@given(
    messages=batches(max_parts=6),
    kept=st.one_of(st.none(), st.lists(st.tuples(st.booleans(), st.binary(max_size=900)), max_size=8)),
    use_syncfs=st.booleans(),
)
def test_compiled_and_pure_commits_reuse_the_same_files(tmp_path_factory, messages, kept, use_syncfs) -> None:
    """Batches with reuse paths (some kept files, some missing) give the same results,
    the same bytes, the same files reused for the same jobs and the same list left over
    on both backends; and every new file holds exactly its job's bytes."""
    from fastmta import kernels

    outcomes = []
    for name in ("cython", "python"):
        backend = kernels.load_backend(name)
        root = tmp_path_factory.mktemp(name)
        for directory in ("tmp", "incoming", "free"):
            (root / directory).mkdir()
        reuse = None
        origin = {}  # inode -> kept file name
        if kept is not None:
            reuse = []
            for index, (exists, old) in enumerate(kept):
                if exists:
                    path = kept_file(root, f"k{index}", old)
                    origin[os.stat(path).st_ino] = f"k{index}"
                reuse.append(os.fsencode(root / "free" / f"k{index}"))
        dir_fd = os.open(root / "incoming", os.O_RDONLY | os.O_DIRECTORY)
        try:
            jobs = batch_jobs(root, messages)
            results = backend.commit_files(jobs, dir_fd, use_syncfs, reuse)
        finally:
            os.close(dir_fd)
        files = {}
        for path in (root / "incoming").iterdir():
            info = path.stat()
            files[path.name] = (path.read_bytes(), origin.get(info.st_ino, "new"), stat.S_IMODE(info.st_mode))
        for index, (parts, _, spilled) in enumerate(messages):
            if not spilled:
                assert files[f"m{index}"][0] == b"".join(parts)
        left = None if reuse is None else [os.path.basename(path) for path in reuse]
        outcomes.append((results, files, os.listdir(root / "tmp"), sorted(os.listdir(root / "free")), left))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == [(0, 0)] * len(messages)
