"""Mutation fuzzing of the decoder, the validator and the control-message parser.

Seeded, bounded and repeatable: 100,000+ cases per target, built by flipping, inserting,
deleting and truncating bytes of valid messages (plus pure garbage).  Every case must end in a
value or in the one exception type the caller handles; none may raise anything else, take long,
or allocate far beyond its input.
"""

from __future__ import annotations

import time
import tracemalloc
from datetime import UTC, datetime

import numpy as np
import pytest

from heimdall_stream.config import LimitsSettings
from heimdall_stream.control.protocol import signed, verify
from heimdall_stream.errors import ControlMessageError, DecodeError
from heimdall_stream.lab.simulator import IqSimulator, LinkModel
from heimdall_stream.processing.intake import decode_and_validate
from heimdall_stream.processing.records import DeadLetter, InputRecord
from heimdall_stream.wire.codec import capture_codec, deployment_codec
from heimdall_stream.wire.messages import ModelDeployment, WeightedVersion
from tests.helpers import NETWORK, features_contract

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
CASES = 100_000


def _mutants(seed: bytes, rng: np.random.Generator, count: int):
    for i in range(count):
        data = bytearray(seed)
        kind = i % 5
        if kind == 0:  # flip bytes
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[pos] = int(rng.integers(0, 256))
        elif kind == 1:  # truncate
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 2:  # insert
            pos = int(rng.integers(0, len(data)))
            data[pos:pos] = rng.bytes(int(rng.integers(1, 16)))
        elif kind == 3:  # delete a slice
            pos = int(rng.integers(0, len(data)))
            del data[pos : pos + int(rng.integers(1, 64))]
        else:  # garbage keeping the header (reaches the body parser)
            data = bytearray(seed[:10]) + rng.bytes(int(rng.integers(0, 256)))
        yield bytes(data)


def _small_capture() -> bytes:
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.0), sample_count=64, seed=3)
    return capture_codec().encode(sim.generate(0).capture)


def test_decoder_and_validator_survive_100k_mutants():
    contract = features_contract(sample_count=64)
    limits = LimitsSettings(max_message_bytes=65_536, max_receivers=32, max_samples=1024)
    rng = np.random.default_rng(1)
    seed = _small_capture()
    worst, cases, letters = 0.0, 0, 0
    tracemalloc.start()
    for value in _mutants(seed, rng, CASES):
        started = time.perf_counter()
        good, bad = decode_and_validate([InputRecord("t", 0, 0, None, value, 0.0)], contract, limits)
        worst = max(worst, time.perf_counter() - started)
        assert len(good) + len(bad) == 1
        letters += len(bad)
        assert all(isinstance(b, DeadLetter) and b.reason and b.message for b in bad)
        cases += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"decoder fuzz: {cases} cases, {letters} dead letters, slowest {worst * 1000:.1f} ms, peak {peak} B"
    )
    assert cases >= CASES
    assert peak < 50 * len(seed) + 10_000_000, "allocation out of proportion to the input"


def test_control_parser_survives_100k_mutants():
    key = b"fuzz-key"
    deployment = signed(
        ModelDeployment(
            "localization_model",
            5,
            (WeightedVersion("models:/localization_model/1", 1.0),),
            "fuzz",
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
        key,
    )
    seed = deployment_codec().encode(deployment)
    rng = np.random.default_rng(2)
    accepted, forged = 0, 0
    for value in _mutants(seed, rng, CASES):
        try:
            parsed = deployment_codec().decode(value)
            verify(parsed, key, "localization_model", applied_generation=0)
        except (DecodeError, ControlMessageError):
            continue
        accepted += 1
        forged += parsed != deployment  # a byte "flipped" to its own value changes nothing
    print(f"control fuzz: {CASES} cases, {accepted} accepted, all unchanged originals")
    assert forged == 0, "a modified deployment verified"
