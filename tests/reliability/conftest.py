"""Reliability tests reuse the integration fixtures (services, model, settings, readers)."""

from tests.integration.conftest import make_settings, model_uri, start_consumer, start_stream  # noqa: F401
from tests.reliability.secured import secure_stack  # noqa: F401  (one secured stack per session)
