"""The C allocator under a long-running daemon: keep RSS tied to what is in use.

Measured with ``lab/soak.py``'s tracing (``bench/results/soak-traced-20261201.json``): while
RSS climbed from 56 to 79 MB over three bursts of 200 flows, the Python heap that
tracemalloc traces stayed at 1-5 MB. The likely cause is glibc keeping freed memory: a
burst allocates many transient 64-256 KiB read buffers; glibc raises its mmap threshold
after the first large free (so later buffers come from the heap, where a single live chunk
pins everything below the top) and gives each thread (the control socket's, asyncio's
executor) an arena of its own. With the settings below, an hour of the same load stayed
within 0.7 MB after its first minutes (``bench/results/soak-60min-20261201.json``).
Two settings and a periodic trim:

- ``M_MMAP_THRESHOLD`` fixed at 128 KiB (setting it turns the dynamic raise off): large
  buffers are mmapped and go back to the kernel when freed;
- ``M_ARENA_MAX`` 2: the daemon's few helper threads share arenas instead of one each;
- ``malloc_trim(0)`` once a minute: returns the free pages inside the heap, not only at
  its top (glibc >= 2.8), off the event loop.

Only on glibc; elsewhere (musl) every call is a no-op that says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import platform

log = logging.getLogger("atlantic.daemon")

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2
TRIM_INTERVAL_S = 60.0


class Allocator:
    """glibc's malloc tuning and trimming, or nothing where the C library is not glibc."""

    def __init__(self) -> None:
        self.libc = None
        if platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6", use_errno=True)
                libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                libc.malloc_trim.argtypes = (ctypes.c_size_t,)
                self.libc = libc
            except (OSError, AttributeError):
                pass
        self.trims = 0

    @property
    def is_glibc(self) -> bool:
        return self.libc is not None

    def tune(self, mmap_threshold: int = MMAP_THRESHOLD, arena_max: int = ARENA_MAX) -> bool:
        """Fix the mmap threshold and cap the arenas (best before threads start); True if applied."""
        if self.libc is None:
            return False
        ok = self.libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
        return self.libc.mallopt(M_ARENA_MAX, arena_max) == 1 and ok

    def trim(self) -> bool:
        """Give free heap pages back to the kernel; True if glibc released any."""
        if self.libc is None:
            return False
        self.trims += 1
        return self.libc.malloc_trim(0) == 1

    async def trim_forever(self, interval: float = TRIM_INTERVAL_S) -> None:
        """``trim()`` every ``interval`` seconds from a worker thread (it walks the heap)."""
        if self.libc is None:
            log.info("the C library is not glibc: no allocator trimming")
            return
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.trim)
