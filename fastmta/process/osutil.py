"""Linux process attributes the master sets on its children, through prctl(2).

- `set_process_name`: the name `ps`, `top` and /proc/PID/comm show (15 octets), so an
  operator (and the tests) can tell the master from receive and delivery workers.
- `exit_with_parent`: SIGTERM this process when its parent dies, so workers never
  outlive a master killed with SIGKILL (they drain and exit like on a normal stop).

Both are best effort: on a system without prctl they do nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

_libc: ctypes.CDLL | None = None


def _prctl(option: int, argument: int | bytes) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, argument, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_process_name(name: str) -> None:
    """Set this process's comm name (truncated to 15 octets by the kernel)."""
    _prctl(_PR_SET_NAME, name.encode("ascii", "replace")[:15])


def exit_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM when the parent exits.

    Call after any change of user or group: the kernel clears the setting then."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent_pid:  # the parent died before the call: act now
        os.kill(os.getpid(), signal.SIGTERM)
