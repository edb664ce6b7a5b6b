"""The model-control protocol: signed desired-state deployments and how to read the answers.

``heimdall.model-control`` is a compacted topic of ``ModelDeployment`` records keyed by model
name: the desired state of a model, not a command.  A deployment may be applied only if it is
signed with the shared HMAC key, names the instance's model, has a generation newer than the
one in force, lists at least one version, has weights in [0, 1] that sum to 1, and every URI
is a ``models:/`` URI of that model (``verify``).  Each instance answers in
``heimdall.model-status`` with a ``ModelStatus`` whose ``state`` says what became of the newest
generation it saw; ``outcome`` reads such an answer on the operator's side.

Pure functions only: both the runtime (which loads models) and the operator tools (which must
start without onnxruntime or MLflow) build on this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterable
from enum import StrEnum

from heimdall_stream.errors import ControlMessageError, HeimdallError
from heimdall_stream.models.registry import ModelRef
from heimdall_stream.models.weights import check_weights
from heimdall_stream.wire.codec import deployment_codec
from heimdall_stream.wire.messages import ApplyState, ModelDeployment, ModelStatus


class Outcome(StrEnum):
    """Where an instance stands with a generation an operator published."""

    APPLIED = "applied"  # it serves that generation or a newer one
    PENDING = "pending"  # it waits for the registry and will retry by itself
    REFUSED = "refused"  # it will not apply it (load failure, rejected message): final
    WAITING = "waiting"  # it has not answered that generation yet


def sign(deployment: ModelDeployment, key: bytes) -> str:
    """Hex HMAC-SHA256 over the deployment encoded with an empty signature."""
    body = deployment_codec().encode(dataclasses.replace(deployment, signature=""))
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def signed(deployment: ModelDeployment, key: bytes) -> ModelDeployment:
    """The deployment with its signature filled in."""
    return dataclasses.replace(deployment, signature=sign(deployment, key))


def verify(deployment: ModelDeployment, key: bytes | None, model_name: str, applied_generation: int) -> None:
    """Raise ``ControlMessageError`` unless this deployment may be applied here.

    The reason says which rule it broke: ``unsigned``, ``bad_signature``, ``other_model``
    (not news for this instance), ``stale`` or ``malformed``.
    """
    if key is None:
        raise ControlMessageError(
            "no control HMAC key configured: deployments cannot be verified", reason="unsigned"
        )
    if not deployment.signature:
        raise ControlMessageError("deployment is not signed", reason="unsigned")
    # Compare bytes: compare_digest refuses non-ASCII str, and a forged signature may be anything.
    if not hmac.compare_digest(deployment.signature.encode(), sign(deployment, key).encode()):
        raise ControlMessageError("deployment signature does not match", reason="bad_signature")
    if deployment.model_name != model_name:
        raise ControlMessageError(
            f"deployment is for {deployment.model_name}, not {model_name}", reason="other_model"
        )
    if deployment.generation <= applied_generation:
        raise ControlMessageError(
            f"stale generation {deployment.generation} (in force: {applied_generation})", reason="stale"
        )
    if not deployment.versions:
        raise ControlMessageError("deployment has no versions", reason="malformed")
    check_weights(v.weight for v in deployment.versions)
    for uri in [v.model_uri for v in deployment.versions] + list(deployment.shadow):
        try:
            ref = ModelRef.parse(uri)
        except HeimdallError as exc:
            raise ControlMessageError(str(exc), reason="malformed") from exc
        if ref.name != model_name:
            raise ControlMessageError(f"{uri} is not a version of {model_name}", reason="malformed")


def next_generation(deployments: Iterable[ModelDeployment], model_name: str) -> int:
    """The generation a new deployment of ``model_name`` takes: one more than any published."""
    return 1 + max((d.generation for d in deployments if d.model_name == model_name), default=0)


def outcome(status: ModelStatus, generation: int) -> Outcome:
    """Where the instance that reported ``status`` stands with ``generation``.

    A report without a state (written before ``state`` existed) that carries an error for the
    generation counts as a refusal.
    """
    if status.generation >= generation:
        return Outcome.APPLIED
    if status.requested_generation < generation:
        return Outcome.WAITING
    if status.state is ApplyState.PENDING:
        return Outcome.PENDING
    if status.state is not ApplyState.APPLIED or status.error:
        return Outcome.REFUSED
    return Outcome.WAITING
