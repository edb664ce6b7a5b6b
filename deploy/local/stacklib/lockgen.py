"""Write ``kafka/jars.lock`` from ``kafka/pom.xml`` with Maven (``make kafka-lock``).

Only needed after editing the pom (a new Kafka or log4j version); running the stack needs no
Maven.  Maven resolves the pom's runtime dependencies and copies them in repository layout
(``group/path/artifact/version/file.jar``), from which the coordinates are read back; the
sha256 of each jar is computed here.  The lock records the pom's own sha256 so that a unit
test notices a pom edited without regenerating the lock.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from stacklib.jars import LOCK, POM, Jar, parse_lock, sha256_of
from stacklib.paths import log

HEADER = """\
# Runtime jars of the local Kafka broker (deploy/local/stack), fetched from Maven Central and
# checked against these sha256 digests. Generated from pom.xml by `make kafka-lock` (needs mvn):
# regenerate after editing the pom. Format: group:artifact:version[:classifier] sha256
"""


def jar_from_repository_path(relative: Path, sha256: str) -> Jar:
    """The coordinates of a jar at ``group/…/artifact/version/artifact-version[-classifier].jar``."""
    *group, artifact, version, filename = relative.parts
    stem = f"{artifact}-{version}"
    if not group or not filename.startswith(stem) or not filename.endswith(".jar"):
        raise ValueError(f"{relative} is not in Maven repository layout")
    classifier = filename[len(stem) : -len(".jar")].lstrip("-")
    return Jar(".".join(group), artifact, version, classifier, sha256)


def regenerate(pom: Path = POM, lock: Path = LOCK) -> int:
    """Resolve the pom with Maven and rewrite the lock; return the number of jars."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "regenerating the lock needs Maven (apt-get install maven); running the stack does not"
        )
    with tempfile.TemporaryDirectory(prefix="kafka-lock-") as tmp:
        subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
                "-Dmdep.useRepositoryLayout=true",
            ],
            check=True,
        )
        root = Path(tmp)
        jars = sorted(
            (jar_from_repository_path(p.relative_to(root), sha256_of(p)) for p in root.rglob("*.jar")),
            key=lambda jar: jar.coordinates,
        )
    body = "".join(f"{jar.coordinates} {jar.sha256}\n" for jar in jars)
    text = f"{HEADER}# pom.xml sha256: {sha256_of(pom)}\n{body}"
    parse_lock(text, str(lock))  # never write a lock the stack could not read
    lock.write_text(text)
    log(f"wrote {len(jars)} jars to {lock}")
    return len(jars)
