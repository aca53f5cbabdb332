"""Keep memory freed between sliding windows in the process's heap, instead of handing it back to the kernel.

Why this exists: each window's forward pass allocates activations of hundreds of MB (a 128 x 256 x 256 window
with 8 channels is 268 MB in float32). glibc serves any block above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and returns it with ``munmap`` when PyTorch frees it, so the next window page-faults the same
amount in again, zero-filled by the kernel: on a 2-core CPU that was 10-14 s of system time in a 30 s
TOF-MRA run (``benchmarks/benchmark_segment.py --heap-returned``, its system CPU column). With mmap switched off for the
duration of the pass and the heap's trim threshold raised, freed activations stay in the heap and the next
window reuses them: no page faults after the first few windows, and the same numbers.

PyTorch's CPU allocator has no cache of its own for this and neither NumPy nor PyTorch exposes one; the
allocator settings are glibc's own (``mallopt``), so this is done by hand through ``ctypes``. On leaving,
the defaults are put back and ``malloc_trim(0)`` returns the freed pages, so a long-lived process (Slicer)
does not keep the peak. Elsewhere than Linux with glibc (macOS, Windows, musl) nothing is changed.
``VESSELSEG_KEEP_FREED_MEMORY=0`` switches it off (the benchmark measures both).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Environment variable: "0" leaves glibc's allocator as it is.
SWITCH_VARIABLE = "VESSELSEG_KEEP_FREED_MEMORY"
# mallopt parameters and glibc's defaults (malloc.h; the trim threshold's default is 128 KiB).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
#: Free heap top kept without trimming while inside: the largest value mallopt takes (a C int), 2 GiB.
_TRIM_ABOVE = 2**31 - 1

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def supported() -> bool:
    """Whether freed memory can be kept here (glibc) and the user has not switched it off."""
    return _LIBC is not None and os.environ.get(SWITCH_VARIABLE, "1") != "0"


@contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Inside: large blocks come from the heap and stay there when freed (see the module docstring).

    Re-entrant and thread-safe (a counter: the outermost exit restores the defaults). Yields whether the
    setting is active.
    """
    global _depth
    if not supported():
        yield False
        return
    with _lock:
        if _depth == 0:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                _LIBC.malloc_trim(0)


__all__ = ["SWITCH_VARIABLE", "keep_freed_memory", "supported"]
