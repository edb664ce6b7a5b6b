"""The join without Kafka: sets close on event time, refusals are dead letters with reasons."""

from __future__ import annotations

import pytest

from heimdall_stream.join.checkpoint import Checkpoint
from heimdall_stream.join.joiner import Joiner
from heimdall_stream.join.keys import scheduled_key, slot_key
from tests.unit.join_parts import EPOCH, join_settings, part_record

MAX = 1 << 20


def _outcomes(joiner: Joiner, records) -> list[tuple[str, object]]:
    """Each emitted record as ('set', key, receivers) or ('dlq', offset, reason)."""
    out = []
    for record in records:
        letter = joiner.letter(record)
        if letter is not None:
            out.append(("dlq", record.offset, letter.reason))
        else:
            capture = record.capture
            out.append(("set", capture.capture_id, tuple(r.receiver_id for r in capture.receivers)))
    return out


def _joiner(**overrides) -> Joiner:
    joiner = Joiner(join_settings(**overrides), MAX)
    joiner.assign(0, None, 0.0)
    return joiner


def test_a_set_is_emitted_once_every_expected_receiver_arrived():
    joiner = _joiner()
    assert joiner.accept(part_record(0, "k1", "b", 1000, expected=2), 0.0) == []
    out = joiner.accept(part_record(1, "k1", "a", 1000, expected=2), 0.0)
    assert _outcomes(joiner, out) == [("set", "k1", ("a", "b"))]
    capture = out[0].capture
    assert capture.captured_at == EPOCH.replace(second=1)
    assert out[0].offset == 0 and joiner.open_sets == 0


def test_a_window_closes_on_event_time_with_the_receivers_that_made_it():
    joiner = _joiner()
    joiner.accept(part_record(0, "k1", "a", 1000), 0.0)
    joiner.accept(part_record(1, "k1", "b", 1100), 0.0)
    assert joiner.accept(part_record(2, "k2", "a", 2999), 0.0) == []  # 2999 < 1000 + 2000
    out = joiner.accept(part_record(3, "k2", "b", 3000), 0.0)
    assert _outcomes(joiner, out) == [("set", "k1", ("a", "b"))]


def test_sets_one_watermark_move_closes_come_out_by_event_time_then_first_offset():
    joiner = _joiner()
    out = []
    for offset, (key, receiver, event) in enumerate(
        # k3 and k1 tie on event time; k3 came first, so it goes first although its key is larger.
        [("k2", "a", 1200), ("k3", "a", 1000), ("k1", "a", 1000), ("k2", "b", 1200), ("k1", "b", 1000)]
    ):
        out += joiner.accept(part_record(offset, key, receiver, event), 0.0)
    out += joiner.accept(part_record(5, "k4", "a", 1100, expected=2), 0.0)
    out += joiner.accept(part_record(6, "k4", "b", 1100, expected=2), 0.0)  # complete: emitted at once
    out += joiner.accept(part_record(7, "k3", "b", 1000), 0.0)
    out += joiner.accept(part_record(8, "k4", "a", 1100), 0.0)  # its window is open: a repeat
    out += joiner.accept(part_record(9, "k5", "a", 5000), 0.0)  # closes k1, k3 and k2 at once
    out += joiner.accept(part_record(10, "k4", "c", 1100), 0.0)  # its window is closed now
    assert _outcomes(joiner, out) == [
        ("set", "k4", ("a", "b")),
        ("dlq", 8, "duplicate"),
        ("set", "k3", ("a", "b")),
        ("set", "k1", ("a", "b")),
        ("set", "k2", ("a", "b")),
        ("dlq", 10, "late"),
    ]
    assert joiner.open_sets == 1


def test_late_duplicate_mismatch_and_too_few_are_dead_lettered():
    joiner = _joiner()
    out = []
    out += joiner.accept(part_record(0, "k1", "a", 1000), 0.0)
    out += joiner.accept(part_record(1, "k1", "a", 1000), 0.0)  # repeat of a
    out += joiner.accept(part_record(2, "k1", "b", 1000, frequency=146e6), 0.0)  # other frequency
    out += joiner.accept(part_record(3, "k1", "c", 1000), 0.0)
    out += joiner.accept(part_record(4, "k2", "a", 5000), 0.0)  # closes k1
    out += joiner.accept(part_record(5, "k1", "d", 1000), 0.0)  # after k1 was emitted
    out += joiner.accept(part_record(6, "k0", "d", 500), 0.0)  # a window long closed
    out += joiner.accept(part_record(7, "k3", "a", 8000), 0.0)  # closes k2 with one receiver
    assert _outcomes(joiner, out) == [
        ("dlq", 1, "duplicate"),
        ("dlq", 2, "mismatch"),
        ("set", "k1", ("a", "c")),
        ("dlq", 5, "late"),
        ("dlq", 6, "late"),
        ("dlq", 4, "too_few"),
    ]


def test_idle_partitions_close_their_sets_by_wall_time():
    joiner = _joiner(idle_ms=1000)
    joiner.accept(part_record(0, "k1", "a", 1000), 10.0)
    joiner.accept(part_record(1, "k1", "b", 1000), 10.0)
    assert joiner.tick(10.5) == []
    assert joiner.tick(12.9) == []  # event time runs on after the 1 s grace, but not past the window yet
    assert _outcomes(joiner, joiner.tick(13.0)) == [("set", "k1", ("a", "b"))]
    late = joiner.accept(part_record(2, "k1", "c", 1000), 14.0)
    assert _outcomes(joiner, late) == [("dlq", 2, "late")]


def test_the_oldest_set_is_closed_early_at_the_bound():
    joiner = _joiner(max_open_sets=2)  # count bound; the metadata bound below
    joiner.accept(part_record(0, "k1", "a", 1000), 0.0)
    joiner.accept(part_record(1, "k1", "b", 1000), 0.0)
    joiner.accept(part_record(2, "k2", "a", 1001), 0.0)
    out = joiner.accept(part_record(3, "k3", "a", 1002), 0.0)
    assert _outcomes(joiner, out) == [("set", "k1", ("a", "b"))]
    assert joiner.evictions and "open sets" in joiner.evictions[0]


def test_undecodable_and_miskeyed_parts_are_dead_letters():
    joiner = _joiner()
    bad = part_record(0, "k1", "a", 1000)
    garbage = type(bad)(bad.topic, 0, 0, b"k1", b"garbage", 0.0)
    miskeyed = type(bad)(bad.topic, 0, 1, b"other", bad.value, 0.0)
    out = joiner.accept(garbage, 0.0) + joiner.accept(miskeyed, 0.0)
    assert [joiner.letter(r).reason for r in out] == ["truncated", "bad_key"]


def test_a_restart_from_the_checkpoint_skips_done_parts_and_rebuilds_waiting_sets():
    joiner = _joiner()
    records = [
        part_record(0, "k1", "a", 1000),  # k1 waits for its window
        part_record(1, "k2", "a", 1100, expected=2),
        part_record(2, "k2", "b", 1100, expected=2),  # k2 complete: emitted
        part_record(3, "k1", "b", 1000),
    ]
    emitted = [r for record in records for r in joiner.accept(record, 0.0)]
    checkpoint = joiner.checkpoints(emitted)[0]
    assert checkpoint.offset == 0 and checkpoint.done == (1, 2)
    restored = Checkpoint.parse(checkpoint.offset, checkpoint.metadata())
    assert restored == checkpoint
    again = Joiner(join_settings(), MAX)
    again.assign(0, restored, 0.0)
    replayed = [r for record in records for r in again.accept(record, 0.0)]
    assert replayed == []  # k2 done; k1 is waiting again with a and b
    out = again.accept(part_record(4, "k3", "a", 9000), 0.0)
    assert _outcomes(again, out) == [("set", "k1", ("a", "b"))]


def test_keys_scheduled_or_derived_from_frequency_and_slot():
    assert scheduled_key("cap-1") == "cap-1"
    with pytest.raises(ValueError):
        scheduled_key("")
    start = EPOCH.replace(microsecond=400_000)
    assert (
        slot_key(145_503_000.0, start, slot_ms=1000, channel_hz=12_500)
        == f"f145500000@{int(EPOCH.timestamp() * 1000)}"
    )


def test_done_parts_behind_a_waiting_one_are_bounded():
    joiner = _joiner(max_tracked_parts=10)
    joiner.accept(part_record(0, "old", "a", 1000), 0.0)  # waits for its window
    out = []
    for offset in range(1, 30):  # complete single-receiver sets, done at once
        out += joiner.accept(part_record(offset, f"k{offset}", "a", 1000, expected=1), 0.0)
    assert ("dlq", 0, "too_few") in _outcomes(joiner, out)  # "old" closed early to bound the metadata
    checkpoint = joiner.checkpoints(out)[0]
    assert checkpoint.offset == 30 and checkpoint.done == ()


def test_after_an_abort_everything_uncommitted_is_re_read_from_the_committed_offset():
    joiner = _joiner()
    first = [part_record(0, "k1", "a", 1000, expected=2), part_record(1, "k1", "b", 1000, expected=2)]
    committed = [r for record in first for r in joiner.accept(record, 0.0)]
    joiner.committed(joiner.checkpoints(committed), committed)
    later = [part_record(2, "k2", "a", 1500, expected=2), part_record(3, "k2", "b", 1500, expected=2)]
    aborted = [r for record in later for r in joiner.accept(record, 0.0)]
    assert _outcomes(joiner, aborted) == [("set", "k2", ("a", "b"))]
    assert joiner.reset(0.0) == {0: 2}  # the aborted transaction's parts are read again
    again = [r for record in later for r in joiner.accept(record, 0.0)]
    assert _outcomes(joiner, again) == [("set", "k2", ("a", "b"))]


def test_the_set_that_gives_way_is_the_longest_waiting_in_any_partition():
    joiner = _joiner(max_open_sets=3)
    joiner.assign(1, None, 0.0)
    for offset, key in enumerate(("k1", "k2", "k3")):  # partition 0 holds the state
        joiner.accept(part_record(offset, key, "a", 1000 + offset), 0.0)
        joiner.accept(part_record(10 + offset, key, "b", 1000 + offset), 0.0)
    # A new set on partition 1: partition 0's oldest gives way, the newcomer stays open.
    out = joiner.accept(part_record(50, "x", "a", 1005, partition=1), 0.0)
    assert _outcomes(joiner, out) == [("set", "k1", ("a", "b"))]
    assert "x" in joiner.partitions[1].open and "k1" not in joiner.partitions[0].open
    assert joiner.checkpoints(out).keys() == {0}, "the evicted set commits in its own partition"


def test_a_second_restart_still_skips_what_was_done_before_the_first():
    # Done before the first restart: 105 and 200 (200 not read again yet when the next commit
    # is made); a second restart must still skip both.
    joiner = Joiner(join_settings(), MAX)
    joiner.assign(0, Checkpoint(100, 5, (105, 200)), 0.0)
    out = []
    for offset in range(100, 110):
        if offset == 105:
            joiner.accept(part_record(offset, "old", "a", 1000), 0.0)  # skipped: done before
            continue
        out += joiner.accept(part_record(offset, f"k{offset}", "a", 1000 + offset, expected=1), 0.0)
    checkpoint = joiner.checkpoints(out)[0]
    assert checkpoint.offset == 110 and 200 in checkpoint.done
    assert Checkpoint.parse(checkpoint.offset, checkpoint.metadata()).done == (200,)
