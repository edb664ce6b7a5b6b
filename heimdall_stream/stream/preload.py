"""Run the consumer on jemalloc: find the library and re-execute the process with it preloaded.

glibc's malloc keeps what the batch path freed in its arenas (a batch allocates tens of MB of
short-lived arrays), so the consumer's resident memory sits near twice a per-message loop's;
fixing glibc's mmap threshold gives that memory back but faults in fresh pages for every batch,
which halved the compute throughput on a 2-core VM.  jemalloc returns freed pages on its own
(its decay) and reuses them without faulting.  In a quiet comparison of the whole consumer it
held 313 against 550 MB (W1) and 392 against 507 MB (W2) at the peak, for the same throughput on
W1 and 0.90x on W2 and a longer p50 (W1); glibc stays the default.  See README "Memory".

An allocator is chosen before the first allocation, so it can only be preloaded
(``LD_PRELOAD``) into a new process: ``heimdall-stream run`` re-executes itself, same pid and
arguments, once.  ``memory.allocator``: ``glibc`` (the default) never preloads, ``auto`` uses
jemalloc when its library is found (Debian and Ubuntu: ``apt-get install libjemalloc2``) and
glibc otherwise, ``jemalloc`` refuses to start without it.  Whether it took is read from the
process's own mappings, not assumed, and logged at start.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from heimdall_stream.errors import ConfigurationError

log = logging.getLogger(__name__)

# Where distributions put the library (Debian/Ubuntu multiarch, Fedora/RHEL, Alpine, /usr/local).
SEARCH_PATTERNS = (
    "/usr/lib/*-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
MAPS = Path("/proc/self/maps")
# jemalloc's tuning unless the environment has its own MALLOC_CONF: purge freed pages on a
# background thread after 1 s rather than 10 (peak RSS 305-317 MB against 320-343 with
# jemalloc's defaults, W1 in paired runs), and no lazily freed ("muzzy") stage in between.
MALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"


@dataclass(frozen=True)
class Plan:
    """What to do about the allocator: ``exec`` (with ``env``), or go on (``active``/``glibc``)."""

    action: Literal["exec", "active", "glibc"]
    library: str | None = None
    env: Mapping[str, str] | None = None
    reason: str = ""


def find_library(configured: str, patterns: Sequence[str] = SEARCH_PATTERNS) -> str | None:
    """The jemalloc shared library: ``configured`` when set (it must exist), else the first found."""
    if configured:
        return configured if Path(configured).is_file() else None
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def mapped_jemalloc(maps: Path = MAPS) -> str | None:
    """The path of the jemalloc library mapped into this process, if any (Linux only)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=5)  # address, perms, offset, device, inode[, path]
        if len(fields) == 6 and Path(fields[5].strip()).name.startswith("libjemalloc"):
            return fields[5].strip()
    return None


def plan(
    allocator: str, configured: str, env: Mapping[str, str], mapped: str | None, library: str | None
) -> Plan:
    """Decide from the setting, the environment, what is mapped and what was found.

    Raises ``ConfigurationError`` when ``jemalloc`` is demanded and cannot be had.
    """
    if mapped:  # whoever preloaded it (this setting, or an operator's own LD_PRELOAD)
        return Plan("active", library=mapped)
    if allocator == "glibc":
        return Plan("glibc", reason="memory.allocator is glibc")
    preloaded = env.get("LD_PRELOAD", "")
    if library and library in preloaded.split(":"):
        # This process was started with it preloaded and the loader did not map it: going
        # round again would loop.
        reason = f"{library} is in LD_PRELOAD but the loader did not map it"
    elif library:
        preload = ":".join(filter(None, [library, preloaded]))
        return Plan("exec", library=library, env={"MALLOC_CONF": MALLOC_CONF, **env, "LD_PRELOAD": preload})
    elif configured:
        reason = f"HEIMDALL_MEMORY__JEMALLOC_LIBRARY={configured} is not a file"
    else:
        reason = (
            "no libjemalloc.so.2 found (apt-get install libjemalloc2, "
            "or set HEIMDALL_MEMORY__JEMALLOC_LIBRARY)"
        )
    if allocator == "jemalloc":
        raise ConfigurationError(f"HEIMDALL_MEMORY__ALLOCATOR=jemalloc, but {reason}")
    return Plan("glibc", reason=reason)


def _is_the_command_process() -> bool:
    """Whether this process was started as ``heimdall-stream`` or ``python -m heimdall_stream.cli``."""
    program = Path(sys.argv[0]) if sys.argv else Path()
    return program.name == "heimdall-stream" or program.parts[-2:] == ("heimdall_stream", "cli.py")


def ensure_allocator(allocator: str, configured: str) -> str:
    """Re-execute this process on jemalloc when the setting asks for it; else the allocator in use.

    Returns ``"jemalloc"`` or ``"glibc"`` (after logging why); does not return when it
    re-executes.  Call it before any thread or client exists: ``execve`` replaces the process.
    """
    library = None if allocator == "glibc" else find_library(configured)
    decided = plan(allocator, configured, os.environ, mapped_jemalloc(), library)
    if decided.action == "exec" and not _is_the_command_process():
        # Called in-process by another program (a test runner): replacing it is not ours to do.
        if allocator == "jemalloc":
            raise ConfigurationError(
                "HEIMDALL_MEMORY__ALLOCATOR=jemalloc needs `heimdall-stream run` as a process of its "
                "own (it re-executes itself with jemalloc preloaded)"
            )
        decided = Plan("glibc", reason="not started as its own process")
    if decided.action == "exec":
        assert decided.env is not None
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], dict(decided.env))
    if decided.action == "active":
        log.info("memory: jemalloc (%s)", decided.library)
        return "jemalloc"
    log.info("memory: glibc malloc (%s)", decided.reason)
    return "glibc"
