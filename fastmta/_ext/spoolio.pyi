"""Type stub for the compiled batch commit of spool files (twin: fastmta._pure.spoolio)."""

__all__ = ["COMMITTED", "IN_TMP", "NOT_CREATED", "PUBLISHED", "commit_files"]

COMMITTED: int
NOT_CREATED: int
IN_TMP: int
PUBLISHED: int

def commit_files(
    jobs: list[tuple[int, bytes, bytes, list[bytes], bytes | None]],
    dir_fd: int,
    use_syncfs: bool = False,
) -> list[tuple[int, int]]: ...
