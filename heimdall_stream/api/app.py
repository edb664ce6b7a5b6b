"""The predict API's routes on Starlette: ``POST /predict``, ``POST /predict/batch``, ``GET /models``.

Every answer is JSON (``/predict`` answers the Localization's Avro instead when asked with
``Accept: application/vnd.heimdall.localization+avro``).  Statuses:

* 200: localized (``/predict/batch``: the request was read; each item carries its own status);
* 400: the body is not a capture (the DLQ's decode reasons: ``decode``, ``truncated``,
  ``bad_magic``, ``wrong_schema``, ``unknown_schema``, ``corrupt``, ``empty``);
* 404: the ``model`` pin names a version this instance does not hold;
* 413: the body, one capture (``oversized``) or the number of captures is over its limit;
* 422: a well-formed capture the model cannot localise (the DLQ's validation reasons, e.g.
  ``unknown_receiver``, ``sample_count_mismatch``, ``non_finite``; or ``inference``, ``geometry``);
* 429: the queue is full; 503: a capture waited past ``queue_timeout_ms``, or the API is
  stopping; both with ``Retry-After``;
* 500: an error no stage anticipated (``internal``).

An error body is ``{"error": {"reason": ..., "class": ..., "message": ...}}``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from heimdall_stream.api.batcher import OverloadedError, RequestBatcher
from heimdall_stream.api.bodies import AVRO_LOCALIZATION, batch_captures, localization_json, single_capture
from heimdall_stream.api.metrics import ApiMetrics
from heimdall_stream.api.scoring import Job, Outcome, Refusal, Scorer, find_version
from heimdall_stream.config import ApiSettings
from heimdall_stream.errors import DecodeError
from heimdall_stream.processing.records import DeadLetter, Result

log = logging.getLogger(__name__)

# The HTTP status of each dead-letter error class (a reason may override it below).
STATUS_OF_CLASS = {
    "DecodeError": 400,
    "InvalidCaptureError": 422,
    "InferenceError": 422,
    "GeometryError": 422,
}
STATUS_OF_REASON = {"oversized": 413, "empty": 400}


class HttpError(Exception):
    """An answer other than 200 decided while reading the request."""

    def __init__(self, status: int, reason: str, message: str, error_class: str = "RequestError") -> None:
        super().__init__(message)
        self.status, self.reason, self.error_class = status, reason, error_class


def outcome_status(outcome: Outcome) -> int:
    """The HTTP status of one capture's outcome."""
    if isinstance(outcome, Result):
        return 200
    if isinstance(outcome, Refusal):
        return outcome.status
    return STATUS_OF_REASON.get(outcome.reason, STATUS_OF_CLASS.get(outcome.error_class, 500))


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """One capture's outcome: the localization, or an error object."""
    if isinstance(outcome, Result):
        return localization_json(outcome.localization)
    if isinstance(outcome, DeadLetter):
        return error_json(outcome.reason, outcome.error_class, outcome.message)
    return error_json(outcome.reason, "Refusal", outcome.message)


def outcome_reason(outcome: Outcome) -> str:
    """``ok`` or the reason a capture was not localized (the metric label)."""
    return "ok" if isinstance(outcome, Result) else outcome.reason


def error_json(reason: str, error_class: str, message: str) -> dict[str, Any]:
    """The body of an error answer."""
    return {"error": {"reason": reason, "class": error_class, "message": message}}


class PredictApi:
    """The routes, bound to a scorer, a batcher made on the serving loop, settings and metrics."""

    def __init__(
        self,
        scorer: Scorer,
        make_batcher: Callable[[], RequestBatcher],
        settings: ApiSettings,
        metrics: ApiMetrics,
    ) -> None:
        self.scorer = scorer
        self.settings = settings
        self.metrics = metrics
        self._make_batcher = make_batcher
        self._batcher: RequestBatcher | None = None
        self._sequence = itertools.count()

    def app(self) -> Starlette:
        """The Starlette application; its lifespan starts and stops the batcher."""

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            self._batcher = self._make_batcher()
            self._batcher.start()
            try:
                yield
            finally:
                await self._batcher.stop()

        return Starlette(
            routes=[
                Route("/predict", self._route("/predict", self.predict), methods=["POST"]),
                Route("/predict/batch", self._route("/predict/batch", self.predict_batch), methods=["POST"]),
                Route("/models", self.models, methods=["GET"]),
            ],
            lifespan=lifespan,
        )

    def _route(
        self, name: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """The handler with its errors answered and its request counted and timed."""

        async def endpoint(request: Request) -> Response:
            started = time.monotonic()
            try:
                response = await handler(request)
            except HttpError as exc:
                response = self._error(exc.status, exc.reason, exc.error_class, str(exc))
                self.metrics.captures.labels(exc.reason).inc()
            except DecodeError as exc:
                response = self._error(400, exc.reason, type(exc).__name__, str(exc))
                self.metrics.captures.labels(exc.reason).inc()
            except OverloadedError as exc:  # shed: counted once, like a request refused unread
                response = self._error(exc.status, exc.reason, "OverloadedError", str(exc))
                self.metrics.captures.labels(exc.reason).inc()
            except Exception as exc:  # a bug, or a dependency failing in a way no stage anticipated
                log.exception("%s failed", name)
                response = self._error(500, "internal", type(exc).__name__, str(exc))
                self.metrics.captures.labels("internal").inc()
            self.metrics.requests.labels(name, str(response.status_code)).inc()
            self.metrics.duration.labels(name).observe(time.monotonic() - started)
            return response

        return endpoint

    async def predict(self, request: Request) -> Response:
        """One capture → its Localization (JSON, or Avro when the client accepts it)."""
        body = await self._body(request)
        value, pin = single_capture(body, request.headers.get("content-type"))
        [outcome] = await self._submit([value], request.query_params.get("model") or pin)
        self.metrics.captures.labels(outcome_reason(outcome)).inc()
        status = outcome_status(outcome)
        if isinstance(outcome, Result) and AVRO_LOCALIZATION in request.headers.get("accept", ""):
            return Response(outcome.value, 200, media_type=AVRO_LOCALIZATION)
        return self._json(outcome_json(outcome), status)

    async def predict_batch(self, request: Request) -> Response:
        """Many captures → ``{"results": [...]}``, each item with its status, in request order."""
        body = await self._body(request)
        values, pin = batch_captures(body, request.headers.get("content-type"))
        if len(values) > self.settings.max_request_captures:
            raise HttpError(
                413,
                "too_many_captures",
                f"{len(values)} captures; at most {self.settings.max_request_captures} per request",
            )
        outcomes = await self._submit(values, request.query_params.get("model") or pin)
        items = []
        for outcome in outcomes:
            self.metrics.captures.labels(outcome_reason(outcome)).inc()
            items.append({"status": outcome_status(outcome), **self._item(outcome)})
        return self._json({"results": items}, 200)

    async def models(self, _request: Request) -> Response:
        """The versions this instance holds, their weights, and which are shadows."""
        served = self.scorer.served()
        versions = [
            {"name": m.name, "version": m.version, "uri": m.uri, "weight": w, "shadow": False}
            for m, w in served.primaries
        ] + [
            {"name": m.name, "version": m.version, "uri": m.uri, "weight": 0.0, "shadow": True}
            for m in served.shadows
        ]
        return self._json({"generation": served.generation, "versions": versions}, 200)

    @staticmethod
    def _item(outcome: Outcome) -> dict[str, Any]:
        if isinstance(outcome, Result):
            return {"localization": localization_json(outcome.localization)}
        return outcome_json(outcome)

    async def _submit(self, values: Sequence[bytes], pin: str | None) -> list[Outcome]:
        if self._batcher is None:
            raise OverloadedError(503, "starting", "the predict API is not serving yet")
        if pin is not None and find_version(self.scorer.served(), pin) is None:
            raise HttpError(404, "model_not_served", f"model version {pin!r} is not held by this instance")
        arrived = time.monotonic()
        jobs = [Job(next(self._sequence), value, pin, arrived) for value in values]
        return await self._batcher.submit(jobs)

    async def _body(self, request: Request) -> bytes:
        """The body, refused (413) as soon as it is known to exceed ``max_body_bytes``."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, "body_too_large", f"body of {declared} bytes exceeds {limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "body_too_large", f"body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _error(self, status: int, reason: str, error_class: str, message: str) -> Response:
        return self._json(error_json(reason, error_class, message), status)

    def _json(self, document: dict[str, Any], status: int) -> Response:
        headers = {"Retry-After": str(self.settings.retry_after_s)} if status in (429, 503) else None
        return JSONResponse(document, status, headers=headers)
