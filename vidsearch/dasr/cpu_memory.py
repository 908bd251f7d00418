"""Keep freed memory in the process on Linux CPUs, instead of handing it back to the system.

DASR* on a CPU allocates and frees batches of hundreds of MB per layer. glibc serves blocks
that large by mmap and returns them on free, so every layer pays page faults on fresh memory:
measured, about half of the back-propagation's time (bench/dasr_variants.py). Raising glibc's
mmap and trim thresholds keeps freed blocks for reuse; the process's peak memory is what it
was, it is only not given back between frames. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_LARGEST = 2**31 - 1
_done = False


def keep_freed_memory() -> bool:
    """Set the thresholds once per process; True where they were set."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
    return _done
