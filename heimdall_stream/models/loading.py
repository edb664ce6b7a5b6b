"""The one way a model version is loaded: fetch it from the registry, then open and warm it up.

The consumer at start-up, the control plane on a deployment and ``heimdall-stream check-model``
all load through ``load_version``, so they open a model with the same onnxruntime thread,
arena and run-size settings and warm it up with one small batch (``model.warm_up_batch_size``,
2 by default): the contract refuses a fixed batch dimension, and two rows a graph that
hard-codes one (when two rows fit in one run, ``model.max_run_input_kbytes``; an IQ model's
rows run one at a time), so a model that cannot take the stream's batches fails here.
"""

from __future__ import annotations

from typing import Protocol

from heimdall_stream.config import Settings
from heimdall_stream.models.inference import LoadedModel, load_model
from heimdall_stream.models.registry import FetchedModel


class ModelSource(Protocol):
    """Where versions come from: ``ModelRegistry``, or a stand-in in unit tests."""

    def fetch(self, uri: str, *, stale_alias_ok: bool = True) -> FetchedModel:
        """The verified local file for ``uri`` (see ``ModelRegistry.fetch``)."""
        ...


def load_version(
    source: ModelSource, uri: str, settings: Settings, *, stale_alias_ok: bool = True
) -> tuple[LoadedModel, FetchedModel]:
    """Fetch ``uri`` and load it with the configured threads, warmed up (``MODEL__WARM_UP_BATCH_SIZE``).

    Returns the model and what the fetch found (whether it came from the on-disk cache, for
    instance).  ``stale_alias_ok`` is passed to the fetch: False where an alias answered from
    the cache could report a change that did not happen.  Raises what the fetch or the load
    raises (``ModelLoadError``, ``RegistryUnavailableError``, ``ModelContractError``...).
    """
    fetched = source.fetch(uri, stale_alias_ok=stale_alias_ok)
    model = load_model(
        fetched.path,
        name=fetched.name,
        version=fetched.version,
        uri=uri,
        sha256=fetched.sha256,
        intra_op_threads=settings.model.intra_op_threads,
        inter_op_threads=settings.model.inter_op_threads,
        warm_up_batch=settings.model.warm_up_batch_size,
        cpu_mem_arena=settings.model.cpu_mem_arena,
        max_run_input_bytes=settings.model.max_run_input_kbytes * 1024,
    )
    return model, fetched
