"""An exclusive lock on a store directory that cannot outlive its holder.

`flock` on `<store>/.lock`: the kernel releases it when the holding process exits or is killed
(kill -9 included), so a crashed dump never blocks the next one. The file keeps the holder's pid,
host and start time, for the message a refused second writer prints. Not for network file systems
without flock support.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from logitstore.errors import StoreError, StoreLockedError

LOCK_NAME = ".lock"


class StoreLock:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store directory {self.root}: {exc.strerror}; choose a writable --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLockedError(
                f"another dump ({holder}) is writing {self.root} right now: wait for it to finish, or choose "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            ).encode(),
        )
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "another process"
