"""Reliability tests reuse the integration fixtures (services, model, settings, readers)."""

from tests.integration.conftest import make_settings, model_uri, start_consumer, start_stream  # noqa: F401
