"""One exception hierarchy for heimdall-stream.

Every error that can reject a capture carries a short machine-readable ``reason`` (used as a
metric label and a dead-letter header) next to its human-readable message.  The command line
turns each class into an exit code (``heimdall_stream.cli``): a ``HeimdallError`` never ends a
command in a traceback.
"""

from __future__ import annotations


class HeimdallError(Exception):
    """Base of every error raised by heimdall-stream."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigurationError(HeimdallError):
    """Settings that cannot work (bad value, missing secret, unreachable service at start)."""

    reason = "configuration"


class DecodeError(HeimdallError):
    """Bytes that are not a record of the expected schema (garbage, truncated, unknown schema)."""

    reason = "decode"


class InvalidCaptureError(HeimdallError):
    """A well-formed capture whose content cannot be localized (unknown receiver, NaN, ...)."""

    reason = "invalid"


class GeometryError(HeimdallError):
    """A covariance or position that has no valid ellipse (degenerate, NaN, out of range)."""

    reason = "geometry"


class ModelContractError(HeimdallError):
    """A model whose self-description does not fit the heimdall.localization contract."""

    reason = "model_contract"


class ModelLoadError(HeimdallError):
    """A model that could not be resolved, fetched, verified or opened."""

    reason = "model_load"


class ModelNotFoundError(ModelLoadError):
    """The registry answered but has no such model, alias, stage or version."""


class RegistryUnavailableError(ModelLoadError):
    """The model registry could not be reached and no usable cached copy exists (transient)."""

    reason = "registry_unavailable"


class InferenceError(HeimdallError):
    """onnxruntime failed or returned outputs of the wrong shape or with non-finite values."""

    reason = "inference"


class InternalError(HeimdallError):
    """An error no stage anticipated while scoring a batch (a bug): its captures are dead-lettered."""

    reason = "internal"


class ControlMessageError(HeimdallError):
    """A model-control message that must not be applied (unsigned, forged, stale, malformed)."""

    reason = "control"


class FatalKafkaError(HeimdallError):
    """The producer or consumer cannot go on (fenced, authorization, fatal idempotence error).

    Raised out of the consume loop: the process must exit and be restarted, since librdkafka
    refuses every further call on a client that reported a fatal error.
    """

    reason = "fatal_kafka"
