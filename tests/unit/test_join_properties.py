"""Properties of the join: codec and checkpoint round trips, and replays that form the same sets."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall_stream.join.checkpoint import Checkpoint
from heimdall_stream.join.joiner import Joiner
from heimdall_stream.join.watermark import UNSET
from heimdall_stream.wire.codec import receiver_codec
from heimdall_stream.wire.messages import ReceiverCapture, SampleFormat
from tests.unit.join_parts import EPOCH, join_settings, part_record

MAX = 1 << 20
RECEIVERS = ["a", "b", "c", "d"]


@given(
    key=st.text(min_size=1, max_size=40),
    receiver=st.text(min_size=1, max_size=20),
    micros=st.integers(0, 10**15),
    frequency=st.floats(1e6, 6e9),
    samples=st.binary(max_size=64),
    offset=st.none() | st.integers(-(2**62), 2**62),
    expected=st.none() | st.integers(0, 2**31 - 1),
    fmt=st.sampled_from(list(SampleFormat)),
)
def test_receiver_capture_round_trips(*, key, receiver, micros, frequency, samples, offset, expected, fmt):
    part = ReceiverCapture(
        transmission_key=key,
        receiver_id=receiver,
        latitude=52.0,
        longitude=-4.5,
        window_start=EPOCH + timedelta(microseconds=micros),
        center_frequency_hz=frequency,
        sample_rate_hz=48_000.0,
        sample_format=fmt,
        samples=samples,
        timestamp_offset_ns=offset,
        expected_receivers=expected,
    )
    assert receiver_codec().decode(receiver_codec().encode(part)) == part


@given(
    offset=st.integers(0, 2**40),
    gaps=st.lists(st.integers(1, 5000), max_size=1200),
    watermark=st.integers(-(2**62), 2**50) | st.just(UNSET),
)
def test_checkpoint_metadata_round_trips_and_fits_the_broker_limit(offset, gaps, watermark):
    done, position = [], offset
    for gap in gaps:
        position += gap
        done.append(position)
    checkpoint = Checkpoint(offset, watermark, tuple(done))
    assert Checkpoint.parse(offset, checkpoint.metadata()) == checkpoint
    if all(gap <= 1200 for gap in gaps):  # parts are tracked densely: at most 2 bytes a gap
        assert len(checkpoint.metadata()) <= 4096


# A transmission: (event time step, receivers that send, how late each one arrives, repeats).
transmissions = st.lists(
    st.tuples(
        st.integers(0, 1500),
        st.lists(st.sampled_from(RECEIVERS), min_size=1, max_size=4, unique=True),
        st.lists(st.integers(0, 4000), min_size=4, max_size=4),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


def _parts(plan) -> list:
    """Part records in arrival order (offset order), with arrival jitter and repeats."""
    arrivals, event = [], 0
    for index, (step, receivers, delays, repeat) in enumerate(plan):
        event += step
        for receiver, delay in zip(receivers, delays, strict=False):
            arrivals.append((event + delay, f"k{index}", receiver, event))
        if repeat:
            arrivals.append((event + delays[0] + 1, f"k{index}", receivers[0], event))
    arrivals.sort()
    return [part_record(offset, key, rx, ev) for offset, (_, key, rx, ev) in enumerate(arrivals)]


def _outcome(joiner: Joiner, record) -> tuple:
    letter = joiner.letter(record)
    if letter is not None:
        return ("dlq", record.offset, letter.reason)
    return ("set", record.key, record.capture)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=transmissions, commit_at=st.floats(0, 1), crash_at=st.floats(0, 1))
def test_a_restart_from_any_commit_forms_the_same_sets(plan, commit_at, crash_at):
    records = _parts(plan)
    reference = Joiner(join_settings(), MAX)
    reference.assign(0, None, 0.0)
    emitted: list = []
    consumed_before: list[int] = []  # how many records were consumed when each emission happened
    for index, record in enumerate(records):
        for out in reference.accept(record, 0.0):
            emitted.append(out)
            consumed_before.append(index + 1)
    ended = reference.flush(0.0)
    everything = [_outcome(reference, r) for r in emitted + ended]
    assert len({o for o in everything if o[0] == "set"}) == sum(1 for o in everything if o[0] == "set")

    # A run that committed its first emissions, crashed somewhere after, and restarted.
    first = Joiner(join_settings(), MAX)
    first.assign(0, None, 0.0)
    committed_count = int(commit_at * len(emitted))
    crash = max(consumed_before[committed_count - 1] if committed_count else 0, int(crash_at * len(records)))
    out_first: list = []
    for record in records[:crash]:
        out_first += first.accept(record, 0.0)
    committed = out_first[:committed_count]
    survived = [_outcome(first, r) for r in committed]
    checkpoint = first.checkpoints(committed).get(0) if committed else None
    restored = Checkpoint.parse(checkpoint.offset, checkpoint.metadata()) if checkpoint else None

    second = Joiner(join_settings(), MAX)
    second.assign(0, restored, 0.0)
    start = restored.offset if restored else 0
    out_second: list = []
    for record in records[start:]:
        out_second += second.accept(record, 0.0)
    out_second += second.flush(0.0)
    replayed = survived + [_outcome(second, r) for r in out_second]
    assert sorted(replayed) == sorted(everything)
