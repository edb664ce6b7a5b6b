"""How the receivers of one transmission agree on its key (the Kafka key and the joined capture id).

Two ways, both supported: a scheduler that tasks the receivers hands out a capture id and
every receiver uses it as is (``scheduled_key``); without a scheduler each receiver derives
the key from what it recorded (``slot_key``): the centre frequency rounded to the channel
raster and the window start floored to the time slot.  Receivers of one transmission then
compute the same key as long as their clocks agree to within a slot and their tuning to
within half a channel; a transmission that straddles a slot edge is split in two sets, which
the join rejects as too small rather than merging by guesswork.
"""

from __future__ import annotations

from datetime import datetime


def scheduled_key(capture_id: str) -> str:
    """The key of a scheduled transmission: the scheduler's capture id itself."""
    if not capture_id:
        raise ValueError("a scheduled transmission needs a non-empty capture id")
    return capture_id


def slot_key(center_frequency_hz: float, window_start: datetime, *, slot_ms: int, channel_hz: float) -> str:
    """``f<channel centre, Hz>@<slot start, ms since the epoch>``: the key without a scheduler."""
    if slot_ms <= 0 or channel_hz <= 0:
        raise ValueError("slot_ms and channel_hz must be positive")
    channel = round(center_frequency_hz / channel_hz) * channel_hz
    millis = int(window_start.timestamp() * 1000)
    slot = millis - millis % slot_ms
    return f"f{round(channel)}@{slot}"
