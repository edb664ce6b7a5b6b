"""The control plane: signing, verification and status reading (pure), weights, sticky routing,
the runtime's registry retries on an injected clock, and the operator side's light imports."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from heimdall_stream.config import Settings
from heimdall_stream.control import runtime
from heimdall_stream.control.protocol import Outcome, next_generation, outcome, sign, signed, verify
from heimdall_stream.errors import ControlMessageError, RegistryUnavailableError
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import FetchedModel, file_sha256
from heimdall_stream.models.routing import ModelSet, route_point
from heimdall_stream.models.weights import check_weights
from heimdall_stream.retry import Backoff
from heimdall_stream.stream.swap import ModelSwap
from heimdall_stream.wire.codec import status_codec
from heimdall_stream.wire.messages import ApplyState, ModelDeployment, ModelStatus, WeightedVersion
from tests.helpers import tiny_features_model

KEY = b"secret"
BASE = ModelDeployment(
    "localization_model",
    3,
    (
        WeightedVersion("models:/localization_model/2", 0.9),
        WeightedVersion("models:/localization_model/3", 0.1),
    ),
    "ops",
    datetime(2026, 1, 1, tzinfo=UTC),
)


def test_a_signed_deployment_verifies():
    verify(signed(BASE, KEY), KEY, "localization_model", applied_generation=2)


@pytest.mark.parametrize(
    ("deployment", "key", "reason"),
    [
        (BASE, KEY, "unsigned"),
        (signed(BASE, b"other"), KEY, "bad_signature"),
        (
            dataclasses.replace(signed(BASE, KEY), generation=4),
            KEY,
            "bad_signature",
        ),  # tampered after signing
        (signed(BASE, KEY), None, "unsigned"),
        (signed(dataclasses.replace(BASE, generation=2), KEY), KEY, "stale"),
        (signed(dataclasses.replace(BASE, model_name="other"), KEY), KEY, "other_model"),
        (signed(dataclasses.replace(BASE, versions=()), KEY), KEY, "malformed"),
        (
            signed(
                dataclasses.replace(BASE, versions=(WeightedVersion("models:/localization_model/2", 0.5),)),
                KEY,
            ),
            KEY,
            "malformed",
        ),
        (
            signed(dataclasses.replace(BASE, versions=(WeightedVersion("models:/elsewhere/2", 1.0),)), KEY),
            KEY,
            "malformed",
        ),
        (
            signed(dataclasses.replace(BASE, versions=(WeightedVersion("s3://x", 1.0),)), KEY),
            KEY,
            "malformed",
        ),
    ],
)
def test_bad_deployments_are_refused_with_a_reason(deployment, key, reason):
    with pytest.raises(ControlMessageError) as info:
        verify(deployment, key, "localization_model", applied_generation=2)
    assert info.value.reason == reason


def test_signature_covers_every_field():
    assert sign(BASE, KEY) != sign(dataclasses.replace(BASE, issued_by="someone else"), KEY)


def test_signatures_are_those_already_on_the_control_topic():
    # Pinned: the signed body is the Avro encoding with an empty signature, byte for byte, so
    # deployments signed by earlier releases still verify.
    assert sign(BASE, KEY) == "74a0787491191f333a9e80a2f1a0d696c2e5eba9bf8e3b8e66305e24ce79ab46"
    with_shadow = dataclasses.replace(BASE, shadow=("models:/localization_model@challenger",), signature="x")
    assert sign(with_shadow, KEY) == "e8454af1f73d78554b9eaa32da3242f0b6cf62a2ab251e4744e5dae8a5ac0b5a"


@pytest.mark.parametrize("weights", [[1.0], [0.9, 0.1], [0.7, 0.2, 0.1], [1.0, 0.0], [1 / 3] * 3])
def test_weights_in_the_unit_interval_that_sum_to_one_pass(weights):
    check_weights(weights)


@pytest.mark.parametrize(
    "weights", [[], [0.5], [0.9, 0.2], [1.5, -0.5], [float("nan"), 1.0], [0.5, 0.5 + 2e-6]]
)
def test_weights_are_refused_by_verify_and_by_the_model_set_alike(weights):
    with pytest.raises(ControlMessageError) as info:
        check_weights(weights)
    assert info.value.reason == "malformed"
    if weights:
        versions = tuple(WeightedVersion(f"models:/localization_model/{i}", w) for i, w in enumerate(weights))
        with pytest.raises(ControlMessageError) as info:
            verify(signed(dataclasses.replace(BASE, versions=versions), KEY), KEY, "localization_model", 2)
        assert info.value.reason == "malformed"
    with pytest.raises(ControlMessageError) as info:
        ModelSet("m", 1, tuple((object(), w) for w in weights))  # type: ignore[misc]
    assert info.value.reason == "malformed"


def _status(generation, requested, state=ApplyState.APPLIED, error=None):
    return ModelStatus("i", "m", generation, (), error=error, requested_generation=requested, state=state)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (_status(5, 5), Outcome.APPLIED),
        (_status(6, 6), Outcome.APPLIED),
        (_status(4, 4), Outcome.WAITING),
        (_status(4, 5), Outcome.WAITING),  # seen, still loading
        (_status(4, 5, ApplyState.PENDING, "waits for the registry"), Outcome.PENDING),
        (_status(4, 5, ApplyState.REFUSED, "sha256 mismatch"), Outcome.REFUSED),
        (_status(4, 5, ApplyState.REJECTED, "rejected: bad signature"), Outcome.REFUSED),
        (_status(4, 5, ApplyState.APPLIED, "written before state existed"), Outcome.REFUSED),
        (_status(4, 4, ApplyState.REFUSED, "about an older generation"), Outcome.WAITING),
    ],
)
def test_a_status_is_read_against_the_published_generation(status, expected):
    assert outcome(status, 5) is expected


def test_the_next_generation_follows_the_newest_of_that_model():
    others = dataclasses.replace(BASE, model_name="other", generation=40)
    assert next_generation([], "localization_model") == 1
    assert next_generation([BASE, others, dataclasses.replace(BASE, generation=7)], "localization_model") == 8


def test_the_operator_side_loads_neither_onnxruntime_nor_mlflow():
    code = (
        "import sys, heimdall_stream.control.operator, heimdall_stream.control.protocol; "
        "print(','.join(m for m in ('onnxruntime', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"the operator side imports {done.stdout.strip()}"


class _Producer:
    """Keeps the statuses the control plane publishes."""

    def __init__(self, _config):
        self.statuses: list[ModelStatus] = []

    def produce(self, _topic, *, key, value, on_delivery=None):
        self.statuses.append(status_codec().decode(value))

    def poll(self, _timeout):
        return 0

    def flush(self, _timeout):
        return 0


class _Registry:
    """Serves one model file, or fails as an unreachable registry while ``down``."""

    def __init__(self, path):
        self.path, self.down, self.calls = path, True, 0

    def fetch(self, uri, *, stale_alias_ok=True):
        self.calls += 1
        if self.down:
            raise RegistryUnavailableError("registry unreachable")
        return FetchedModel(uri, "tiny", uri.rsplit("/", 1)[-1], self.path, file_sha256(self.path), False)


def test_a_deployment_waiting_for_the_registry_is_retried_on_the_backoff_of_the_injected_clock(
    tmp_path, monkeypatch
):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_features_model())
    monkeypatch.setattr(runtime, "Producer", _Producer)
    serving = [ModelSet.single(load_model(path, name="tiny", version="6", uri="models:/tiny/6", sha256="x"))]

    def offer(model_set):
        serving[0] = model_set
        swapped = threading.Event()
        swapped.set()
        return swapped

    now = [100.0]
    registry = _Registry(path)
    plane = runtime.ControlPlane(
        Settings.model_validate({"instance_id": "i-1", "batching": {"max_batch_size": 2}}),
        Metrics(CollectorRegistry()),
        lambda: serving[0],
        offer,
        source=registry,
        clock=lambda: now[0],
        backoff=Backoff(2.0, 30.0, jitter=0.0),
    )
    published = plane._producer.statuses
    deployment = dataclasses.replace(
        BASE, model_name="tiny", generation=1, versions=(WeightedVersion("models:/tiny/7", 1.0),)
    )
    plane._apply(deployment)
    assert registry.calls == 1
    assert [(s.state, s.generation) for s in published] == [(ApplyState.PENDING, 0)]
    assert "waits for the registry" in (published[0].error or "")
    for at, calls in [(101.9, 1), (102.0, 2), (105.9, 2), (106.0, 3), (113.9, 3), (114.0, 4)]:
        now[0] = at
        plane.retry_pending()
        assert registry.calls == calls, f"at {at}"
    assert len(published) == 1, "pending is reported once, not on every retry"
    registry.down = False
    now[0] = 130.0  # 114 + 16
    plane.retry_pending()
    assert registry.calls == 5
    assert serving[0].generation == 1 and serving[0].primaries[0][0].version == "7"
    assert [(s.state, s.generation, s.error) for s in published[1:]] == [(ApplyState.APPLIED, 1, None)]
    now[0] = 1000.0
    plane.retry_pending()
    assert registry.calls == 5, "nothing is pending any more"


def test_an_offer_not_taken_in_time_is_withdrawn_so_a_refused_set_is_never_served_later(
    tmp_path, monkeypatch
):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_features_model())
    monkeypatch.setattr(runtime, "Producer", _Producer)
    first = ModelSet.single(load_model(path, name="tiny", version="6", uri="models:/tiny/6", sha256="x"))
    swap = ModelSwap(first)  # the stream loop never comes round to take the offer
    registry = _Registry(path)
    registry.down = False
    plane = runtime.ControlPlane(
        Settings.model_validate({"instance_id": "i-1", "batching": {"max_batch_size": 2}}),
        Metrics(CollectorRegistry()),
        swap.current,
        swap.offer,
        withdraw=swap.withdraw,
        apply_timeout_s=0.01,
        source=registry,
    )
    deployment = dataclasses.replace(
        BASE, model_name="tiny", generation=1, versions=(WeightedVersion("models:/tiny/7", 1.0),)
    )
    plane._apply(deployment)
    published = plane._producer.statuses
    assert [(s.state, s.generation) for s in published] == [(ApplyState.REFUSED, 0)]
    assert "not swapped in time" in (published[0].error or "")
    assert swap.take_offer() is None, "the refused set is no longer on offer"
    assert swap.current() is first


def test_withdrawing_an_offer_the_loop_already_took_reports_it_taken(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_features_model())
    model = load_model(path, name="tiny", version="6", uri="models:/tiny/6", sha256="x")
    first, second, third = (ModelSet.single(model, generation) for generation in (0, 1, 2))
    swap = ModelSwap(first)
    taken = swap.offer(second)
    assert swap.take_offer() is not None
    assert swap.withdraw(taken) is False and swap.current() is second
    superseded = swap.offer(first)
    newer = swap.offer(third)
    assert swap.withdraw(superseded) is False, "a superseded offer is not the one on offer"
    assert swap.withdraw(newer) is True and swap.take_offer() is None


@given(st.text(min_size=1, max_size=40))
def test_route_point_is_deterministic_and_in_unit_interval(capture_id):
    assert 0.0 <= route_point(capture_id) < 1.0
    assert route_point(capture_id) == route_point(capture_id)


def test_route_points_are_uniform_enough_for_a_90_10_split():
    points = np.array([route_point(f"cap-{i}") for i in range(20_000)])
    assert abs((points >= 0.9).mean() - 0.1) < 0.01
