"""Deployment signing and verification, and sticky weighted routing (pure)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.control.runtime import sign, signed, verify
from heimdall_stream.errors import ControlMessageError
from heimdall_stream.models.routing import bhattacharyya_overlap, route_point
from heimdall_stream.wire.messages import ModelDeployment, WeightedVersion

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


@given(st.text(min_size=1, max_size=40))
def test_route_point_is_deterministic_and_in_unit_interval(capture_id):
    assert 0.0 <= route_point(capture_id) < 1.0
    assert route_point(capture_id) == route_point(capture_id)


def test_route_points_are_uniform_enough_for_a_90_10_split():
    points = np.array([route_point(f"cap-{i}") for i in range(20_000)])
    assert abs((points >= 0.9).mean() - 0.1) < 0.01


def test_overlap_of_identical_gaussians_is_one_and_far_apart_is_zero():
    assert bhattacharyya_overlap([0, 0], [100, 50, 0.2], [0, 0], [100, 50, 0.2]) == pytest.approx(1.0)
    assert bhattacharyya_overlap([0, 0], [100, 50, 0.2], [10_000, 0], [100, 50, 0.2]) < 1e-6
