"""MLflow model registry access with an on-disk, sha256-checked cache.

``ModelRegistry.fetch(uri)`` accepts ``models:/name@alias``, ``models:/name/<stage>`` and
``models:/name/<version>``; it resolves the URI to a version, downloads the ONNX file once into
``<cache_dir>/<name>/<version>/`` and records its sha256 in a manifest.  The sha256 is checked
against the registry's ``heimdall.sha256`` version tag (when present) on download and against
the manifest on every load, *before* onnxruntime opens the file.

The cache is shared safely by threads and processes (two consumers on one host, pods on one
volume): a version is downloaded by one fetcher at a time under a per-version file lock, the
others wait and reuse its result; a published, valid version is never removed; every temporary
name is unique to its writer, and entries appear only by an atomic rename.

If the registry cannot be reached, the last resolution of that URI that worked is served from
the cache (``FetchedModel.from_cache``), so a restart during an MLflow outage keeps serving the
last-known-good model.  Without a cached copy, ``RegistryUnavailableError`` says the failure is
transient (the control plane retries it), unlike a plain ``ModelLoadError`` (bad URI, missing
version, sha256 mismatch), which retrying cannot fix.

MLflow itself is imported only to download a version (once per cache) or for a tracking URI
that is not plain HTTP(S): resolving goes through ``registry_rest``, since the MLflow client
would hold about 130 MB of the consumer's memory for the rest of its life.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from heimdall_stream.errors import ModelLoadError, ModelNotFoundError, RegistryUnavailableError
from heimdall_stream.models import registry_rest
from heimdall_stream.models.registry_rest import display_uri, mask_credentials

SHA_TAG = "heimdall.sha256"
# Longest a fetcher waits for another one downloading the same version (a big model, slow link).
DOWNLOAD_LOCK_TIMEOUT_S = 600.0
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))$")

# The MLflow client retries a dead server for minutes by default; a consumer must notice an
# outage within seconds and fall back to its cache instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
# A progress bar per download is noise in a service log.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI."""

    name: str
    alias: str | None = None
    version: str | None = None
    stage: str | None = None

    def __str__(self) -> str:
        """The URI form (messages name the model as the operator wrote it, not as a repr)."""
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version or self.stage}"

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """Parse a models:/ URI or raise ``ModelLoadError``."""
        match = _URI.match(uri.strip())
        if not match:
            raise ModelLoadError(
                f"bad model URI {uri!r}: expected models:/name@alias, models:/name/<stage> or "
                "models:/name/<version>"
            )
        name, alias, ref = match["name"], match["alias"], match["ref"]
        if alias:
            return cls(name, alias=alias)
        if ref and ref.isdigit():
            return cls(name, version=ref)
        return cls(name, stage=ref)


@dataclass(frozen=True)
class FetchedModel:
    """A model file on local disk whose sha256 has been verified."""

    uri: str
    name: str
    version: str
    path: Path
    sha256: str
    from_cache: bool


class ModelRegistry:
    """Resolves, downloads and caches ONNX models from an MLflow registry."""

    def __init__(self, tracking_uri: str, cache_dir: Path) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir).expanduser()

    def fetch(self, uri: str, *, stale_alias_ok: bool = True) -> FetchedModel:
        """The verified local file for ``uri``: from MLflow, or from the cache if MLflow is down.

        With ``stale_alias_ok=False`` an alias or stage is never answered from the cache (it may
        have moved since); a pinned version still is, since it never changes.
        """
        ref = ModelRef.parse(uri)
        try:
            version, expected_sha = self._resolve(ref)
        except ModelLoadError:
            raise
        except Exception as exc:  # MlflowException, requests errors: the registry is unreachable
            # The cause is kept: a 401, a TLS failure and a refused connection differ for the
            # operator.
            cause = mask_credentials(f"{type(exc).__name__}: {exc}")
            down = f"registry {display_uri(self.tracking_uri)} unreachable ({cause})"
            if not stale_alias_ok and ref.version is None:
                raise RegistryUnavailableError(f"{down}: cannot resolve {uri} now") from exc
            cached = self._last_known_good(uri)
            if cached is None:
                raise RegistryUnavailableError(f"{down} and no cached copy of {uri}") from exc
            return cached
        # The cache is keyed by name and version: an entry whose file is not the one this registry
        # tags (another registry's, or one re-created since, numbered alike) is fetched anew.
        fetched = self._cached_version(uri, ref.name, version, expected=expected_sha) or self._fetch_locked(
            uri, ref.name, version, expected_sha
        )
        if expected_sha and fetched.sha256 != expected_sha:
            raise ModelLoadError(
                f"{ref.name}/{version}: file sha256 {fetched.sha256[:12]}… does not match the "
                f"registry's {SHA_TAG} {expected_sha[:12]}…"
            )
        self._remember(uri, ref.name, version)
        return fetched

    # ------------------------------------------------------------------ registry side

    def _client(self) -> Any:
        # Imported here only: the MLflow client costs ~130 MB of RSS for the life of the process.
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _resolve(self, ref: ModelRef) -> tuple[str, str | None]:
        if registry_rest.supported(self.tracking_uri):
            # The common case: one small REST call, and MLflow is never imported by a consumer
            # whose model is already in its cache.
            try:
                version, tags = registry_rest.resolve_version(
                    self.tracking_uri, ref.name, alias=ref.alias, version=ref.version, stage=ref.stage
                )
            except ModelNotFoundError as exc:
                if ref.alias or ref.version:
                    raise self._not_found(ref, str(exc)) from exc
                raise
            return version, tags.get(SHA_TAG)
        return self._resolve_with_client(ref)

    def _not_found(self, ref: ModelRef, detail: str) -> ModelNotFoundError:
        """One wording whichever way the version was looked up (operators grep for it)."""
        return ModelNotFoundError(
            f"registry has no {ref} (MLflow at {display_uri(self.tracking_uri)}): {detail}"
        )

    def _resolve_with_client(self, ref: ModelRef) -> tuple[str, str | None]:
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            if ref.alias:
                mv = client.get_model_version_by_alias(ref.name, ref.alias)
            elif ref.version:
                mv = client.get_model_version(ref.name, ref.version)
            else:
                latest = client.get_latest_versions(ref.name, stages=[ref.stage])
                if not latest:
                    raise ModelNotFoundError(f"model {ref.name} has no version in stage {ref.stage!r}")
                mv = latest[0]
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                raise self._not_found(ref, exc.message) from exc
            raise
        return str(mv.version), (mv.tags or {}).get(SHA_TAG)

    def _fetch_locked(self, uri: str, name: str, version: str, expected: str | None = None) -> FetchedModel:
        """Download a version once, however many threads and processes ask for it at once.

        Under the version's file lock the cache is checked again: whoever waited for the lock
        finds the entry the holder just published and loads that, instead of downloading it
        again (and, before this lock, deleting it under the other's feet).
        """
        target = self._version_dir(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock", timeout=DOWNLOAD_LOCK_TIMEOUT_S):
            cached = self._cached_version(uri, name, version, expected=expected)
            if cached is not None:
                return cached
            try:
                return self._download(uri, name, version, target)
            except ModelLoadError:
                raise
            except Exception as exc:  # the registry or its artifact store went away mid-download
                raise RegistryUnavailableError(
                    f"download of {name}/{version} from {display_uri(self.tracking_uri)} failed "
                    f"({mask_credentials(f'{type(exc).__name__}: {exc}')})"
                ) from exc

    def _download(self, uri: str, name: str, version: str, target: Path) -> FetchedModel:
        """Stage the version privately, then publish it with one rename (caller holds the lock)."""
        import mlflow.artifacts  # only here: see _client

        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
            # Resolve the version's artifact location through *this* registry: a models:/ URI
            # handed to download_artifacts would be resolved against the process-wide default.
            source = self._client().get_model_version_download_uri(name, version)
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=tmp, tracking_uri=self.tracking_uri
                )
            )
            candidates = sorted(local.rglob("*.onnx"))
            if not candidates:
                raise ModelLoadError(f"{name}/{version} has no .onnx file in its artifacts")
            staged = Path(tmp) / "staged"
            staged.mkdir()
            shutil.copy2(candidates[0], staged / "model.onnx")
            sha = file_sha256(staged / "model.onnx")
            (staged / "manifest.json").write_text(
                json.dumps({"name": name, "version": version, "sha256": sha, "uri": uri})
            )
            if target.exists():
                # Only an entry that failed verification gets here (a valid one was returned
                # above): move it aside first, so the rename below never meets a non-empty dir.
                _discard(target)
            os.replace(staged, target)  # atomic: a half-written cache entry is never visible
        return FetchedModel(uri, name, version, target / "model.onnx", sha, from_cache=False)

    # ------------------------------------------------------------------ cache side

    def _version_dir(self, name: str, version: str) -> Path:
        return self.cache_dir / _safe(name) / _safe(version)

    def _cached_version(
        self, uri: str, name: str, version: str, *, from_cache: bool = False, expected: str | None = None
    ) -> FetchedModel | None:
        directory = self._version_dir(name, version)
        manifest, model = directory / "manifest.json", directory / "model.onnx"
        if not (manifest.exists() and model.exists()):
            return None
        try:
            recorded = json.loads(manifest.read_text()).get("sha256")
        except (OSError, ValueError):
            return None
        actual = file_sha256(model)
        if actual != recorded or (expected and actual != expected):
            # A corrupted, tampered or foreign entry is never loaded; the locked fetch replaces it.
            return None
        return FetchedModel(uri, name, version, model, actual, from_cache=from_cache)

    def _remember(self, uri: str, name: str, version: str) -> None:
        pointer = self.cache_dir / "resolved" / f"{_safe(uri)}.json"
        pointer.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name of this writer's own: concurrent writers never share one.
        tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"uri": uri, "name": name, "version": version}))
        os.replace(tmp, pointer)

    def _last_known_good(self, uri: str) -> FetchedModel | None:
        pointer = self.cache_dir / "resolved" / f"{_safe(uri)}.json"
        if not pointer.exists():
            return None
        try:
            data = json.loads(pointer.read_text())
        except (OSError, ValueError):
            return None
        return self._cached_version(uri, data["name"], data["version"], from_cache=True)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (the cache's checksum of a model file)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _discard(directory: Path) -> None:
    """Rename a directory to a unique name beside it, then delete it."""
    doomed = directory.with_name(f".{directory.name}.discard-{uuid.uuid4().hex}")
    os.replace(directory, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)
