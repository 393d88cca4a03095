"""One run per output name: a lock file beside the output while a run writes it.

Two runs writing the same output would share its ``.incomplete`` file and leave a mix of
both, or a corrupt file, under the final name. A run therefore creates ``<output>.lock``
(``result.tif`` -> ``result.tif.lock``) atomically before it writes anything, holding who
writes (process, host, start time), and removes it when it finishes, fails or is
interrupted. A lock left by a run that was killed does not block forever: on the same host a
lock whose process no longer exists is stale and is taken over. A lock from another host
cannot be checked, so the message names it for the user to remove.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .frames import StackError

#: A lock file still empty after this many seconds was left by a run killed while creating it.
_EMPTY_LOCK_GRACE_S = 10.0


def lock_path(path: str | Path) -> Path:
    """The lock file of the output ``path``: ``result.tif`` -> ``result.tif.lock``."""
    path = Path(path)
    return path.with_name(f"{path.name}.lock")


def check_unlocked(path: str | Path) -> None:
    """Refuse when another run is writing ``path``; a stale lock is removed.

    Parameters
    ----------
    path : str or Path
        The output (not the lock file).

    Raises
    ------
    StackError
        Naming the run that holds the lock and what to do.
    """
    lock = lock_path(path)
    holder = _read_lock(lock)
    if holder is None:
        return
    if not _alive(holder, lock):
        lock.unlink(missing_ok=True)
        return
    where = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = holder.get("started")
    since = f" since {since}" if since else ""
    command = f" ({holder['command']})" if holder.get("command") else ""
    raise StackError(
        f"{path} is being written by another run: {where}{since}{command}. Wait for it to "
        f"finish or choose another output name; if that run is gone, remove {lock}."
    )


class OutputLock:
    """Holds ``<output>.lock`` from :meth:`acquire` until :meth:`release`.

    Parameters
    ----------
    path : str or Path
        The output the lock protects.
    """

    def __init__(self, path: str | Path) -> None:
        self.output = Path(path)
        self.path = lock_path(path)
        self._held = False

    def acquire(self) -> None:
        """Take the lock, or raise the :func:`check_unlocked` message if a live run has it."""
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:200],
        }
        # Twice: the first attempt may find a stale lock, which check_unlocked removes.
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                check_unlocked(self.output)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(holder, f)
            self._held = True
            return
        check_unlocked(self.output)
        raise StackError(f"could not take the lock {self.path}; remove it if no run is writing.")

    def release(self) -> None:
        """Remove the lock file (once; later calls do nothing)."""
        if self._held:
            self._held = False
            self.path.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict | None:
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict, lock: Path) -> bool:
    """Whether the run that wrote ``holder`` may still be running."""
    if not holder:
        # Created but not yet filled in, or cut short by a kill: young means being written.
        try:
            return time.time() - lock.stat().st_mtime < _EMPTY_LOCK_GRACE_S
        except FileNotFoundError:
            return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True
