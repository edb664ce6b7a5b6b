"""Choosing the consumer's malloc: jemalloc preloaded by a re-exec, or glibc, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from heimdall_stream.errors import ConfigurationError
from heimdall_stream.stream.preload import MALLOC_CONF, find_library, mapped_jemalloc, plan

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def test_auto_with_the_library_found_re_executes_with_it_preloaded_before_any_other() -> None:
    decided = plan("auto", "", {"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"}, None, LIB)
    assert decided.action == "exec"
    assert decided.env is not None
    assert decided.env["LD_PRELOAD"] == f"{LIB}:/opt/other.so"
    assert decided.env["PATH"] == "/bin"
    assert decided.env["MALLOC_CONF"] == MALLOC_CONF


def test_an_operator_s_own_jemalloc_tuning_is_kept() -> None:
    decided = plan("auto", "", {"MALLOC_CONF": "narenas:1"}, None, LIB)
    assert decided.env is not None and decided.env["MALLOC_CONF"] == "narenas:1"


def test_once_mapped_it_is_active_and_nothing_is_re_executed() -> None:
    decided = plan("auto", "", {"LD_PRELOAD": LIB}, LIB, LIB)
    assert (decided.action, decided.library) == ("active", LIB)


def test_preloaded_but_not_mapped_does_not_loop() -> None:
    decided = plan("auto", "", {"LD_PRELOAD": LIB}, None, LIB)
    assert decided.action == "glibc"
    assert "did not map" in decided.reason
    with pytest.raises(ConfigurationError, match="did not map"):
        plan("jemalloc", "", {"LD_PRELOAD": LIB}, None, LIB)


def test_auto_without_the_library_stays_on_glibc_and_says_how_to_get_it() -> None:
    decided = plan("auto", "", {}, None, None)
    assert decided.action == "glibc"
    assert "apt-get install libjemalloc2" in decided.reason


def test_jemalloc_demanded_but_missing_refuses_to_start_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"HEIMDALL_MEMORY__ALLOCATOR=jemalloc.*libjemalloc2"):
        plan("jemalloc", "", {}, None, None)
    with pytest.raises(ConfigurationError, match=r"HEIMDALL_MEMORY__JEMALLOC_LIBRARY=/nope is not a file"):
        plan("jemalloc", "/nope", {}, None, None)


def test_glibc_never_preloads_even_when_the_library_is_there() -> None:
    assert plan("glibc", "", {}, None, LIB).action == "glibc"


def test_an_operator_s_own_preload_is_reported_as_it_is() -> None:
    decided = plan("glibc", "", {"LD_PRELOAD": LIB}, LIB, LIB)
    assert (decided.action, decided.library) == ("active", LIB)


def test_the_library_is_the_configured_file_or_the_first_one_found(tmp_path: Path) -> None:
    lib = tmp_path / "lib" / "x86_64-linux-gnu" / "libjemalloc.so.2"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    patterns = (str(tmp_path / "none" / "libjemalloc.so.2"), str(tmp_path / "lib" / "*" / "libjemalloc.so.2"))
    assert find_library("", patterns) == str(lib)
    assert find_library(str(lib), ()) == str(lib)
    assert find_library(str(tmp_path / "missing.so"), patterns) is None
    assert find_library("", patterns[:1]) is None


def test_the_mapped_library_is_read_from_the_process_maps(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "55d0c0000000-55d0c0001000 r--p 00000000 fd:01 1234   /usr/bin/python3.11\n"
        "7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n"
        f"7f1000000000-7f1000010000 r-xp 00000000 fd:01 5678   {LIB}\n"
    )
    assert mapped_jemalloc(maps) == LIB
    maps.write_text("7f0000000000-7f0000021000 rw-p 00000000 00:00 0\n")
    assert mapped_jemalloc(maps) is None
    assert mapped_jemalloc(tmp_path / "no-such-file") is None
