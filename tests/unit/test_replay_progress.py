"""A replay's saved progress: resumed over the range it started with, refused for another replay."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from heimdall_stream.errors import ConfigurationError
from heimdall_stream.replay.report import VersionReport
from heimdall_stream.replay.runner import ReplayJob, _save, _saved_progress
from heimdall_stream.replay.sinks import FileSink
from heimdall_stream.replay.source import Range

MODELS: Any = [SimpleNamespace(label="m/4", sha256="ab" * 32)]


def job(state: Path, end: str = "latest") -> ReplayJob:
    out = state.with_suffix(".out")
    return ReplayJob("earliest", end, ("models:/m/4",), output_file=out, state_file=state)


def test_no_state_file_means_a_new_replay(tmp_path: Path) -> None:
    assert _saved_progress(job(tmp_path / "s.json"), "in", MODELS) is None


def test_a_resumed_replay_keeps_its_range_and_offsets(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    span = Range("in", {0: (10, 500), 1: (0, 40)})
    _save(job(state), span, MODELS, {0: 200, 1: 0}, {"m/4": VersionReport("m/4")}, output_bytes=0)
    # Resolving "latest" again would give another end (the topic grew): the saved range is used.
    saved = _saved_progress(job(state), "in", MODELS)
    assert saved is not None
    resumed, start, reports, output_bytes = saved
    assert resumed == span and start == {0: 200, 1: 0} and list(reports) == ["m/4"]
    assert output_bytes == 0
    assert not state.with_suffix(".json.tmp").exists()


@pytest.mark.parametrize(
    ("topic", "end", "models"),
    [
        ("other", "latest", MODELS),
        ("in", "2026-11-30T12:00:00Z", MODELS),
        ("in", "latest", [SimpleNamespace(label="m/4", sha256="cd" * 32)]),
    ],
)
def test_the_progress_of_another_replay_is_refused(tmp_path: Path, topic: str, end: str, models: Any) -> None:
    state = tmp_path / "s.json"
    _save(job(state), Range("in", {0: (0, 5)}), MODELS, {0: 1}, {"m/4": VersionReport("m/4")})
    with pytest.raises(ConfigurationError, match="another replay"):
        _saved_progress(job(state, end), topic, models)
    assert json.loads(state.read_text())["range"] == {"0": [0, 5]}


def test_a_new_replay_does_not_append_to_answers_already_in_its_file(tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"
    FileSink(out).close()  # an empty file is fine to start over
    out.write_text('{"earlier": "run"}\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="already holds answers"):
        FileSink(out)


def test_a_resumed_file_is_cut_back_to_what_its_saved_progress_covers(tmp_path: Path) -> None:
    out, state = tmp_path / "answers.jsonl", tmp_path / "s.json"
    covered = b'{"chunk": 1}\n'
    out.write_bytes(covered + b'{"chunk": 2, "written before the stop')
    _save(job(state), Range("in", {0: (0, 9)}), MODELS, {0: 4}, {}, output_bytes=len(covered))
    saved = _saved_progress(job(state), "in", MODELS)
    assert saved is not None
    sink = FileSink(out, resume_at=saved[3])
    sink.close()
    assert out.read_bytes() == covered, "chunk 2 is written again once, not twice"
    with pytest.raises(ConfigurationError, match="fewer than"):
        FileSink(tmp_path / "lost.jsonl", resume_at=len(covered))


def test_a_progress_that_does_not_say_how_far_its_file_was_written_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    _save(job(state), Range("in", {0: (0, 9)}), MODELS, {0: 4}, {})  # no output position
    with pytest.raises(ConfigurationError, match="does not say how far"):
        _saved_progress(job(state), "in", MODELS)
    # The progress of a replay into a topic is not one into a file.
    to_topic = ReplayJob("earliest", "latest", ("models:/m/4",), output_topic="t", state_file=state)
    _save(to_topic, Range("in", {0: (0, 9)}), MODELS, {0: 4}, {})
    with pytest.raises(ConfigurationError, match="progress of another replay"):
        _saved_progress(job(state), "in", MODELS)
