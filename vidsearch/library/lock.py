"""One writer at a time: an flock on write.lock, whose text names the holder."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import LockedError


class WriterLock:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0) -> None:
        """Become the one writer, waiting up to `wait` seconds; otherwise say who holds it."""
        fd = os.open(self.root / "write.lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise LockedError(
                        f"library {self.root} is being written by {holder}: wait for it to finish, "
                        "or pass --wait SECONDS") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        cmd = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({cmd}) since {time.strftime('%H:%M:%S')}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
