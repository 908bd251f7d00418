"""Files the library writes: atomic replacement (temporary name, fsync, rename) and the cheap
content key that tells videos apart."""

from __future__ import annotations

import errno
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import LibraryError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def content_key(path: Path, block: int = 1 << 22) -> str:
    """Size + hashes of the first and last 4 MiB: cheap, and enough to tell files apart."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(block))
        if size > block:
            f.seek(max(block, size - block))
            h.update(f.read(block))
    return h.hexdigest()[:32]


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it into place.
    A full disk becomes a one-line LibraryError; the old file stays as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise LibraryError(f"no space left on the device while writing {path.name}: free some space "
                               "and run the command again (nothing committed was lost)") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
