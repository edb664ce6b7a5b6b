"""The Kafka broker's jars: read ``kafka/jars.lock``, fetch from Maven Central, verify sha256.

The lock names every runtime jar of the broker as ``group:artifact:version[:classifier] sha256``
(one per line, ``#`` comments).  Each jar is downloaded once into the shared cache, in
parallel, to a temporary name; it gets its real name (an atomic rename) only after its sha256
matched, so a cached jar is always a verified one and several stacks can fill one cache at
once.  ``lockgen`` writes the lock from ``kafka/pom.xml``.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stacklib.paths import LOCAL

LOCK = LOCAL / "kafka" / "jars.lock"
POM = LOCAL / "kafka" / "pom.xml"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
WORKERS = 8
ATTEMPTS = 3
TIMEOUT_S = 60.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_POM_DIGEST = re.compile(r"^#\s*pom\.xml sha256:\s*([0-9a-f]{64})\s*$", re.MULTILINE)


class LockError(RuntimeError):
    """The lock file is malformed, or a download does not match it."""


@dataclass(frozen=True)
class Jar:
    """One locked artifact."""

    group: str
    artifact: str
    version: str
    classifier: str
    sha256: str

    @property
    def coordinates(self) -> str:
        """``group:artifact:version[:classifier]``, as written in the lock."""
        tail = f":{self.classifier}" if self.classifier else ""
        return f"{self.group}:{self.artifact}:{self.version}{tail}"

    @property
    def filename(self) -> str:
        """The file name in a Maven repository and in the cache."""
        tail = f"-{self.classifier}" if self.classifier else ""
        return f"{self.artifact}-{self.version}{tail}.jar"

    def url(self, base: str) -> str:
        """Where the jar lives in a Maven repository laid out like Maven Central."""
        group = self.group.replace(".", "/")
        return f"{base.rstrip('/')}/{group}/{self.artifact}/{self.version}/{self.filename}"


@dataclass(frozen=True)
class FetchReport:
    """What ``ensure_jars`` did."""

    jars: list[Path]
    fetched: int
    fetched_bytes: int
    seconds: float


def parse_lock(text: str, source: str = "jars.lock") -> list[Jar]:
    """Parse the lock; a clear error names the line of anything malformed or repeated."""
    jars: list[Jar] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        coordinates = fields[0].split(":")
        if len(fields) != 2 or len(coordinates) not in (3, 4) or not all(coordinates):
            raise LockError(f"{source}:{lineno}: expected 'group:artifact:version[:classifier] sha256'")
        sha256 = fields[1].lower()
        if not _SHA256.match(sha256):
            raise LockError(f"{source}:{lineno}: {fields[1]!r} is not a sha256 (64 hex digits)")
        group, artifact, version = coordinates[:3]
        jar = Jar(group, artifact, version, coordinates[3] if len(coordinates) == 4 else "", sha256)
        if jar.filename in seen:
            raise LockError(f"{source}:{lineno}: {jar.filename} is locked twice")
        seen.add(jar.filename)
        jars.append(jar)
    if not jars:
        raise LockError(f"{source}: no jars locked")
    return jars


def pom_digest_in_lock(text: str) -> str | None:
    """The sha256 of the pom the lock was generated from (its ``# pom.xml sha256:`` line)."""
    found = _POM_DIGEST.search(text)
    return found.group(1) if found else None


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_jars(jars: list[Jar], directory: Path, base_url: str | None = None) -> FetchReport:
    """Every locked jar in ``directory``, verified; the missing or corrupt ones downloaded."""
    base = base_url or os.environ.get("HEIMDALL_STACK_MAVEN_URL", MAVEN_CENTRAL)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Hashing the cached jars again (~44 MB) costs a fraction of a second and catches a corrupt
    # cache, which would otherwise surface as a JVM class-loading error.
    missing = [
        jar
        for jar in jars
        if not (directory / jar.filename).exists() or sha256_of(directory / jar.filename) != jar.sha256
    ]
    sizes: list[int] = []
    if missing:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            sizes = list(pool.map(lambda jar: download(jar, directory / jar.filename, base), missing))
    return FetchReport(
        jars=[directory / jar.filename for jar in jars],
        fetched=len(missing),
        fetched_bytes=sum(sizes),
        seconds=time.monotonic() - started,
    )


def download(jar: Jar, target: Path, base: str) -> int:
    """Download one jar to ``target`` via a temporary file, checking its sha256; return its size."""
    url = jar.url(base)
    # Unique per process and thread: concurrent stacks sharing the cache never write one file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    last: Exception | None = None
    for attempt in range(ATTEMPTS):
        try:
            digest, size = _stream(url, tmp)
        except urllib.error.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            if exc.code < 500:  # 404 and the like: retrying will not help
                raise LockError(f"{jar.coordinates}: {url} answered HTTP {exc.code}") from exc
            last = exc
        except OSError as exc:  # URLError, timeouts, resets, a full disk
            tmp.unlink(missing_ok=True)
            last = exc
        else:
            if digest != jar.sha256:
                tmp.unlink(missing_ok=True)
                raise LockError(
                    f"{jar.coordinates}: the sha256 of {url} is {digest}, the lock says {jar.sha256}; "
                    "nothing was kept. A proxy or mirror altered it, or the lock is wrong "
                    "(regenerate it with `make kafka-lock`)."
                )
            os.replace(tmp, target)
            return size
        if attempt + 1 < ATTEMPTS:
            time.sleep(2**attempt)  # a transient network error: back off 1 s, then 2 s
    raise LockError(
        f"could not download {url} after {ATTEMPTS} attempts: {last} "
        "(set HEIMDALL_STACK_MAVEN_URL to use a Maven mirror)"
    )


def _stream(url: str, tmp: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    request = urllib.request.Request(url, headers={"User-Agent": "heimdall-stream-local-stack"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, tmp.open("wb") as out:
        while chunk := response.read(1 << 16):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
