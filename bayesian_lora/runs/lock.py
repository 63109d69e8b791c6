"""One writer per run folder: ``run.lock`` names the PID and host of the writer.

The lock is an exclusive ``flock`` on ``run.lock`` held for the whole run (the kernel drops it
when the process dies, whatever kills it); the file's content says who holds it. A second writer
is refused with the first one's PID, host and start time. A lock file left by a writer that died
(its PID no longer runs on this host, or the flock is free) is stale: it is reported, and broken
only when asked (``break_lock=true``). On file systems without ``flock`` the PID check alone
decides.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from bayesian_lora.errors import InputError
from bayesian_lora.runs.layout import LOCK_FILE


class RunFolderLockedError(InputError, RuntimeError):
    """Another process writes to this run folder, or a dead one left its lock behind.

    An input error: the entry points print it as one ``error:`` line and exit with status 2.
    """


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(owner: dict[str, Any]) -> str:
    return (
        f"PID {owner.get('pid')} on host {owner.get('host')!r} (since {owner.get('started')}, "
        f"{owner.get('command', '?')})"
    )


class RunLock:
    def __init__(self, folder: Path, break_lock: bool = False) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.break_lock = break_lock
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def owner(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text() or "{}"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flocked = self._flock(fd)
            owner = self.owner()
            here = socket.gethostname()
            if flocked is False:
                raise RunFolderLockedError(
                    f"run folder {self.path.parent} is in use by {_describe(owner)}; wait for "
                    "it to finish or stop it, or write to another folder"
                )
            pid = owner.get("pid")
            if pid is not None and pid != os.getpid():
                same_host = owner.get("host") == here
                if same_host and _alive(int(pid)) and flocked is None:
                    raise RunFolderLockedError(
                        f"run folder {self.path.parent} is in use by {_describe(owner)}"
                    )
                if not self.break_lock:
                    why = (
                        "which no longer runs"
                        if same_host
                        else "which did not release it (killed?)"
                    )
                    raise RunFolderLockedError(
                        f"run folder {self.path.parent} holds a stale lock ({self.path}) of "
                        f"{_describe(owner)}, {why}; if no other process writes there, break it "
                        "with break_lock=true (e.g. resume=<run folder> break_lock=true)"
                    )
            info = {
                "pid": os.getpid(),
                "host": here,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv[:3]),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: locked; False: held by another process; None: no flock here (PID check only)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self.owner().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
