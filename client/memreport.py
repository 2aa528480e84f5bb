"""Where the daemon's memory goes: the control socket's root-only ``memory`` command.

RSS alone cannot tell a leak of Python objects from an allocator that keeps freed pages
(glibc's arenas): the first grows what ``tracemalloc`` traces, the second only RSS. When
the daemon was started with ``ATLANTIC_TRACEMALLOC=N`` in its environment (tracing costs
CPU and memory, so never by default; it starts once the daemon's modules are imported, as
their import-time allocations never grow), the report adds the traced heap and the allocation
sites that grew most since the previous ``memory`` call (the first call compares with
nothing: it lists the largest sites). ``python -m atlantic.lab.soak`` samples it.
"""

from __future__ import annotations

import os
import threading
import tracemalloc

TOP_SITES = 15
TRACE_ENV = "ATLANTIC_TRACEMALLOC"


def start_tracing_from_env() -> int:
    """Start tracemalloc with ``$ATLANTIC_TRACEMALLOC`` frames (1-100); 0 if unset or not a number."""
    try:
        frames = int(os.environ.get(TRACE_ENV, "0"))
    except ValueError:
        return 0
    if 0 < frames <= 100 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
        return frames
    return 0


def rss_kib() -> int | None:
    """This process's resident set size in KiB (None where /proc cannot say)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryReport:
    """Builds ``memory`` replies; keeps the previous snapshot to report growth between calls."""

    def __init__(self, top: int = TOP_SITES) -> None:
        self.top = top
        self._previous: tracemalloc.Snapshot | None = None
        self._lock = threading.Lock()  # control threads may ask at once; snapshots are large

    def report(self, sites: bool = True) -> dict:
        """RSS, and when tracing: traced KiB (now, peak) and, with ``sites``, the top growing
        sites (a snapshot holds the GIL for a while under load: ask for sites sparingly)."""
        reply: dict = {"rss_kib": rss_kib(), "tracing": tracemalloc.is_tracing()}
        if not reply["tracing"]:
            reply["hint"] = f"start the daemon with {TRACE_ENV}=25 in its environment to see allocation sites"
            return reply
        current, peak = tracemalloc.get_traced_memory()
        reply.update(traced_kib=current // 1024, traced_peak_kib=peak // 1024)
        if not sites:
            return reply
        with self._lock:
            snap = tracemalloc.take_snapshot().filter_traces((
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            ))
            previous, self._previous = self._previous, snap
        if previous is None:
            stats = snap.statistics("traceback")[: self.top]
            reply["largest"] = [_site(s.traceback, s.size, s.count) for s in stats]
        else:
            stats = snap.compare_to(previous, "traceback")[: self.top]
            reply["growth"] = [dict(_site(s.traceback, s.size, s.count), grew_kib=round(s.size_diff / 1024, 1),
                                    grew_count=s.count_diff) for s in stats]
        return reply


def _site(traceback: tracemalloc.Traceback, size: int, count: int) -> dict:
    """One allocation site: innermost frames first (the deepest ones name the cause; a
    Traceback runs from the oldest frame to the most recent)."""
    frames = [f"{f.filename.rsplit('/site-packages/', 1)[-1]}:{f.lineno}" for f in reversed(traceback)][:6]
    return {"kib": round(size / 1024, 1), "count": count, "where": frames}
