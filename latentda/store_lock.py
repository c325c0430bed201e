"""One writer per store: an atomic lock file ``<store>.lock`` beside the store.

The lock records the owner's pid and host. A second writer is refused with a
message naming them; a lock whose process is gone (a killed run) is *stale* and
is taken over only when asked (``--break-lock``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["StoreLockedError", "acquire_lock", "lock_path", "release_lock"]


class StoreLockedError(RuntimeError):
    """Another writer holds (or held, if stale) the lock of a store."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of a store: ``<store>.lock`` beside it (never inside the zarr tree)."""
    p = Path(path)
    return p.with_name(p.name + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def acquire_lock(path: str | os.PathLike, *, break_lock: bool = False) -> Path:
    """Take the single-writer lock of a store (atomic create of ``<store>.lock``).

    Raises
    ------
    StoreLockedError
        If a live process holds the lock, or a stale lock (its process is dead) is
        found and ``break_lock`` is False; the message names the owner's pid and host.
    """
    import socket

    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "created": datetime.now(UTC).isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(lp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lp.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            pid, host = owner.get("pid"), owner.get("host", "?")
            same_host = host == me["host"]
            alive = (not same_host) or (isinstance(pid, int) and _pid_alive(pid))
            if alive and not break_lock:
                where = "" if same_host else " (another host: cannot check it is alive)"
                raise StoreLockedError(
                    f"store {str(path)!r} is being written by pid {pid} on host {host}{where}; "
                    "one writer per store. If that process is gone, pass --break-lock "
                    "(break_lock=True)") from None
            if not alive and not break_lock:
                raise StoreLockedError(
                    f"store {str(path)!r} has a stale lock from pid {pid} on host {host}, "
                    "which is no longer running (a killed run); pass --break-lock "
                    "(break_lock=True) to take it over, with --resume to continue the run") \
                    from None
            lp.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        return lp
    raise StoreLockedError(f"could not take the lock {lp}")


def release_lock(path: str | os.PathLike) -> None:
    """Remove the lock of a store if this process holds it."""
    lp = lock_path(path)
    try:
        owner = json.loads(lp.read_text())
    except (OSError, ValueError):
        return
    if owner.get("pid") == os.getpid():
        lp.unlink(missing_ok=True)
