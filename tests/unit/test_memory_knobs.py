"""The memory knobs: settings parsing, the onnxruntime arena and run slicing, malloc tuning, trimming."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pydantic import ValidationError

from heimdall_stream.config import Settings
from heimdall_stream.models.inference import PreparedBatch, load_model, session_options
from heimdall_stream.models.loading import load_version
from heimdall_stream.models.registry import FetchedModel, file_sha256
from heimdall_stream.stream.allocator import Trimmer, tune_malloc
from tests.helpers import iq_contract, tiny_features_model, tiny_model


def test_memory_and_model_knobs_have_defaults_and_parse_from_the_environment(monkeypatch):
    settings = Settings()
    assert settings.model.cpu_mem_arena is False and settings.model.max_run_input_kbytes == 1024
    memory = settings.memory
    assert (memory.malloc_arena_max, memory.malloc_mmap_threshold_kbytes, memory.trim_interval_ms) == (
        2,
        0,
        0,
    )
    for key, value in {
        "HEIMDALL_MODEL__CPU_MEM_ARENA": "true",
        "HEIMDALL_MODEL__MAX_RUN_INPUT_KBYTES": "0",
        "HEIMDALL_MEMORY__MALLOC_ARENA_MAX": "0",
        "HEIMDALL_MEMORY__MALLOC_MMAP_THRESHOLD_KBYTES": "4096",
        "HEIMDALL_MEMORY__TRIM_INTERVAL_MS": "100",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.model.cpu_mem_arena is True and settings.model.max_run_input_kbytes == 0
    memory = settings.memory
    knobs = (memory.malloc_arena_max, memory.malloc_mmap_threshold_kbytes, memory.trim_interval_ms)
    assert knobs == (0, 4096, 100)
    monkeypatch.setenv("HEIMDALL_MEMORY__TRIM_INTERVAL_MS", "-1")
    with pytest.raises(ValidationError):
        Settings()


class OneFile:
    """A model source serving one local file."""

    def __init__(self, path):
        self.path = path

    def fetch(self, uri, *, stale_alias_ok=True):
        return FetchedModel(uri, "tiny", "1", self.path, file_sha256(self.path), False)


@pytest.mark.parametrize("arena", [False, True])
def test_the_arena_setting_reaches_the_session_options(tmp_path, arena):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_features_model())
    settings = Settings.model_validate({"model": {"cpu_mem_arena": arena, "max_run_input_kbytes": 3}})
    model, _ = load_version(OneFile(path), "models:/tiny/1", settings)
    assert model.session.get_session_options().enable_cpu_mem_arena is arena
    assert model.max_run_input_bytes == 3 * 1024
    assert session_options(1, 1).enable_cpu_mem_arena is False  # the default: no arena


class RecordingSession:
    """Wraps a session: records the rows of every run; outputs depend on each row's input."""

    def __init__(self, session):
        self.session = session
        self.rows: list[int] = []

    def run(self, names, inputs):
        self.rows.append(len(inputs["iq"]))
        position, covariance = self.session.run(names, inputs)
        first = inputs["iq"][:, 0, 0, 0]
        return position + first[:, None], covariance + first[:, None]


def test_a_batch_over_the_run_bound_runs_in_slices_of_whole_captures_with_the_same_outputs(tmp_path):
    path = tmp_path / "iq.onnx"
    path.write_bytes(tiny_model(iq_contract()))
    sha = file_sha256(path)
    whole = load_model(path, name="m", version="1", uri="u", sha256=sha, warm_up_batch=1)
    row_kbytes = 7 * 2 * 10_000 * 4 // 1024 + 1  # one capture's IQ (and its mask) in KB, rounded up
    sliced = load_model(
        path,
        name="m",
        version="1",
        uri="u",
        sha256=sha,
        warm_up_batch=1,
        max_run_input_bytes=3 * row_kbytes * 1024,
    )
    inputs = whole.input_adapter.warm_up_inputs(8)
    inputs["iq"][:, 0, 0, 0] = np.arange(8, dtype=np.float32)  # every row tells its outputs apart
    batch = PreparedBatch(inputs, tuple(f"k{i}" for i in range(8)), ((),) * 8)
    whole.session, sliced.session = RecordingSession(whole.session), RecordingSession(sliced.session)
    expected, got = whole.infer(batch), sliced.infer(batch)
    assert whole.session.rows == [8] and sliced.session.rows == [3, 3, 2]
    np.testing.assert_array_equal(got.position_enu_m, expected.position_enu_m)
    np.testing.assert_array_equal(got.covariance_enu, expected.covariance_enu)
    assert sliced.rows_per_run(inputs, 8) == 3 and whole.rows_per_run(inputs, 8) == 8
    # A bound smaller than one capture still runs one capture at a time.
    sliced.max_run_input_bytes = 1
    assert sliced.rows_per_run(inputs, 8) == 1


def test_malloc_settings_apply_on_glibc_and_zero_leaves_them_alone():
    import platform

    assert tune_malloc(0, 0) is True  # nothing asked, nothing done
    assert tune_malloc(2, 0) is (platform.libc_ver()[0] == "glibc")


def test_the_trimmer_trims_only_after_work_and_stops():
    trimmed = threading.Event()
    calls: list[int] = []

    def trim() -> None:
        calls.append(1)
        trimmed.set()

    trimmer = Trimmer(0.01, trim)
    trimmer.start()
    trimmer.worked()
    assert trimmed.wait(30), "no trim after work"
    trimmer.stop()
    assert trimmer.trims == len(calls) == 1  # one unit of work, one trim, however long it waited
    assert Trimmer(0.0).trims == 0  # disabled: no thread to start
    disabled = Trimmer(0.0)
    disabled.start()
    disabled.worked()
    disabled.stop()
    assert disabled.trims == 0
