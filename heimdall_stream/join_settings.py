"""Settings of the per-receiver join (``HEIMDALL_JOIN__*``), a section of ``config.Settings``.

Kept apart from ``config`` only for size; like every section it is frozen and refuses unknown
fields.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class JoinSettings(BaseModel):
    """The per-receiver path: parts on their own topic, joined into capture sets (see join/)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        False,
        description="Also consume ReceiverCapture parts from the receivers topic and join them into "
        "captures that go down the same batch path as whole ones.",
    )
    topic: str = Field("heimdall.iq.receivers", description="Topic of ReceiverCapture parts.")
    window_ms: int = Field(
        2_000,
        ge=1,
        description="Event-time window of a set: it closes (and is emitted with the receivers it has) "
        "once the partition's watermark passes its window_start + this; a part of it after that is late.",
    )
    idle_ms: int = Field(
        1_000,
        ge=1,
        description="Wall time without any new part in a partition after which its event time runs on "
        "with the wall clock (without traffic it would stand still): a quiet partition's last sets close "
        "about window + this after their last part.",
    )
    min_receivers: int = Field(
        3, ge=1, description="Fewest receivers a set needs; a smaller set goes to the DLQ (too_few)."
    )
    expected_receivers: int = Field(
        0,
        ge=0,
        description="Receivers a set is complete with when its parts do not say (expected_receivers); "
        "0 = such sets always wait for their window to close.",
    )
    time_tolerance_ms: float = Field(
        250.0, ge=0, description="Most a part's window_start may differ from its set's (else: mismatch)."
    )
    frequency_tolerance_hz: float = Field(
        5_000.0,
        ge=0,
        description="Most a part's centre frequency may differ from its set's (else: mismatch).",
    )
    slot_ms: int = Field(
        1_000, ge=1, description="Time slot of a derived key (no scheduler): f<Hz>@<slot ms>."
    )
    channel_hz: float = Field(12_500.0, gt=0, description="Channel raster of a derived key's frequency.")
    max_open_sets: int = Field(
        2_000,
        ge=1,
        description="Most sets waiting for parts; at the bound the oldest is closed early with what it has "
        "(counted as evicted).",
    )
    max_pending_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Most sample bytes of waiting parts; at the bound the oldest sets are closed early.",
    )
    max_tracked_parts: int = Field(
        1_000,
        ge=10,
        le=1_200,
        description="Most done parts per partition behind its oldest waiting part (their offsets are "
        "committed as offset metadata, at most 2 bytes each, which brokers cap at 4 KB by default); at "
        "the bound the oldest waiting set is closed early.",
    )
