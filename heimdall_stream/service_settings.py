"""Settings sections of the services beside the stream, parts of ``config.Settings``.

The per-receiver join (``HEIMDALL_JOIN__*``), the predict API (``HEIMDALL_API__*``), the live
map (``HEIMDALL_MAP__*``) and the calibrator (``HEIMDALL_CALIBRATION__*``).  Kept apart from
``config`` for size; like every section each is frozen and refuses unknown fields.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JoinSettings(_Section):
    """The per-receiver path: parts on their own topic, joined into capture sets (see join/)."""

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


class ApiSettings(_Section):
    """The HTTP predict API (``POST /predict``, ``/predict/batch``) served beside the stream."""

    enabled: bool = Field(
        False, description="Serve the predict API in ``heimdall-stream run`` (on its own port and threads)."
    )
    host: str = Field("0.0.0.0", description="Address the predict API binds.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the predict API (0 = any).")
    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Most captures of concurrent requests scored in one inference batch."
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long the first waiting capture may wait for companions while a worker is "
        "free (while every worker is busy, requests accumulate anyway, so batches grow with the load).",
    )
    max_queue: int = Field(
        256,
        ge=1,
        description="Most captures waiting for a worker; a request that does not fit is answered 429 "
        "with Retry-After at once (the queue is never unbounded).",
    )
    queue_timeout_ms: float = Field(
        2_000.0,
        gt=0,
        description="A capture that waited longer than this for a worker is not scored: 503 with "
        "Retry-After (its client has likely given up; scoring it would only delay the others).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Batches scored at once, on the API's own threads (never the stream's workers).",
    )
    max_request_captures: int = Field(
        256, ge=1, description="Most captures in one /predict/batch request (more: 413)."
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body accepted (more: 413)."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 429 and 503 answers.")


class MapSettings(_Section):
    """The live map (``heimdall-stream map``): where it listens, its basemap, what it keeps."""

    host: str = Field("127.0.0.1", description="Address the map server binds.")
    port: int = Field(8765, ge=0, le=65535, description="Port of the map page (0 = any).")
    tile_url: str = Field(
        "",
        description="XYZ tile URL template, e.g. https://tile.example.org/{z}/{x}/{y}.png; empty = the "
        "offline basemap only (a latitude/longitude grid and coarse coastlines and borders).",
    )
    tile_attribution: str = Field("", description="Attribution shown for the tiles.")
    keep: int = Field(
        10_000, ge=1, le=100_000, description="Newest results the server buffers and the page keeps."
    )
    group_id_prefix: str = Field(
        "heimdall-map", description="Prefix of the map's own consumer group (+ the instance id)."
    )


class CalibrationSettings(_Section):
    """Live calibration (``heimdall-stream calibrate``): results joined with the ground-truth topic."""

    truth_topic: str = Field(
        "heimdall.ground-truth", description="Topic of GroundTruth records (key capture_id)."
    )
    confidences: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        [0.6827, 0.95], min_length=1, description="Confidences coverage is measured at (JSON list)."
    )
    window_s: float = Field(
        600.0,
        gt=0,
        description="Event time an unmatched result or truth waits for its partner (and read back at start).",
    )
    max_pending: int = Field(100_000, ge=1, description="Most results (and truths) waiting for a partner.")
    coverage_window: int = Field(
        500, ge=1, description="Newest scored truths the coverage_ratio gauge covers."
    )
    host: str = Field("0.0.0.0", description="Address of the calibrator's /metrics, /healthz, /readyz.")
    port: int = Field(9109, ge=0, le=65535, description="Port of the calibrator's /metrics (0 = any).")
