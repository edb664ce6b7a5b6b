"""glibc malloc tuning for the consumer process, applied once at start-up.

The consumer's threads (the stream loop, the batch workers, librdkafka's broker threads) each
get a malloc arena of their own from glibc, up to eight per core, and an arena keeps what was
freed in it for re-use instead of giving it back: every thread that once handled a batch holds
on to about a batch's worth of memory.  Fewer arenas (``memory.malloc_arena_max``) share that
memory instead.  glibc also raises its mmap threshold, up to 32 MB, each time a large block is
freed, so that the per-batch arrays (a dense IQ batch is about 20 MB) end up in those arenas
too; a fixed threshold (``memory.malloc_mmap_threshold_kbytes``) keeps blocks above it in their
own mappings, returned to the system when freed, at the price of fresh (zeroed) pages for the
next one.

``mallopt`` changes only how later allocations are made, so this runs before any client,
model or worker thread exists.  On a C library other than glibc, or with jemalloc preloaded
(``stream.preload``, ``memory.allocator`` auto or jemalloc), nothing is changed (logged).

Even so, the arenas keep the free space between the blocks still in use.  ``Trimmer`` gives it
back (``malloc_trim``, which releases the free pages inside every arena) every
``memory.trim_interval_ms`` while batches are flowing; the next batch then faults in fresh pages
where it would have reused old ones.  Off by default: measured on a 2-core VM, trimming every
100 ms took 50-80 MB off the peak but about halved the throughput (page faults are dear there),
and every second it saved nothing measurable.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading
from collections.abc import Callable

from heimdall_stream.stream.preload import mapped_jemalloc

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc(arena_max: int, mmap_threshold_kbytes: int) -> bool:
    """Apply the settings that are non-zero through ``mallopt``; whether glibc took them."""
    wanted = [(M_ARENA_MAX, arena_max), (M_MMAP_THRESHOLD, mmap_threshold_kbytes * 1024)]
    wanted = [(option, value) for option, value in wanted if value > 0]
    if not wanted:
        return True
    libc = _glibc()
    if libc is None:
        log.info("malloc is not glibc's: its settings (memory.malloc_*, trim) left alone")
        return False
    applied = all(libc.mallopt(option, value) == 1 for option, value in wanted)
    if not applied:
        log.warning("glibc refused a malloc setting (memory.*): %s", wanted)
    return applied


def _glibc() -> ctypes.CDLL | None:
    """glibc, when it is the C library and its malloc is the one in use (not a preloaded jemalloc)."""
    if platform.libc_ver()[0] != "glibc" or mapped_jemalloc() is not None:
        return None
    return ctypes.CDLL(None)


class Trimmer:
    """Hands the arenas' free pages back to the system every ``interval_s`` while work is done.

    A thread of its own does the trimming (about a millisecond, but longer when the machine is
    busy), so it never delays the stream loop's commits; the loop only says when it committed.
    """

    def __init__(self, interval_s: float, trim: Callable[[], object] | None = None) -> None:
        self.interval_s = interval_s
        if trim is None and interval_s > 0:
            libc = _glibc()
            trim = (lambda: libc.malloc_trim(0)) if libc is not None else None
        self._trim = trim
        self._worked = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.trims = 0

    def start(self) -> None:
        """Start trimming in the background (nothing to do when disabled or not on glibc)."""
        if self._trim is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heimdall-trim", daemon=True)
            self._thread.start()

    def worked(self) -> None:
        """Batches were committed: their memory is free now, and worth trimming soon."""
        self._worked.set()

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._worked.is_set() and self._trim is not None:
                self._worked.clear()
                self._trim()
                self.trims += 1
