"""librdkafka's log through Python logging: clean one-line records, repeats rate-limited, JSON-safe."""

from __future__ import annotations

import io
import json
import logging

import pytest

from heimdall_stream.config import Settings
from heimdall_stream.logs import (
    LIBRDKAFKA_LOGGER,
    JsonFormatter,
    LibrdkafkaFilter,
    librdkafka_logger,
)

# How confluent-kafka calls Logger.log: its syslog -> Python map, then this format and arguments.
SYSLOG_TO_PYTHON = {0: 50, 1: 50, 2: 50, 3: 40, 4: 30, 5: 20, 6: 20, 7: 10}
REFUSED = "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(level: int, facility: str, text: str, client: str = "rdkafka#consumer-1") -> logging.LogRecord:
    return logging.LogRecord(
        LIBRDKAFKA_LOGGER, level, __file__, 1, "%s [%s] %s", (facility, client, text), None
    )


@pytest.mark.parametrize(("syslog", "python"), sorted(SYSLOG_TO_PYTHON.items()))
def test_each_level_keeps_its_mapped_python_level(syslog: int, python: int) -> None:
    record = _record(python, "FAIL", f"level {syslog}")
    assert LibrdkafkaFilter(clock=Clock()).filter(record)
    assert record.levelno == python
    assert record.getMessage() == f"FAIL [rdkafka#consumer-1] level {syslog}"
    assert (record.facility, record.client) == ("FAIL", "rdkafka#consumer-1")  # type: ignore[attr-defined]


def test_repeats_pass_once_per_window_and_the_next_one_counts_the_dropped() -> None:
    clock = Clock()
    flt = LibrdkafkaFilter(repeat_s=10.0, clock=clock)
    passed = []
    for attempt in range(50):  # a broker down: a failed connect every 100 ms, timings vary
        clock.now += 0.1
        suffix = "(after 0ms in state CONNECT)" if attempt % 2 else f"(after {attempt}ms in state CONNECT)"
        record = _record(40, "FAIL", REFUSED + "Connection refused " + suffix)
        if flt.filter(record):
            passed.append(record)
    assert len(passed) == 1 and not hasattr(passed[0], "suppressed")
    clock.now += 10.0
    later = _record(40, "FAIL", REFUSED + "Connection refused (after 1ms in state CONNECT)")
    assert flt.filter(later)
    assert later.suppressed == 49  # type: ignore[attr-defined]
    assert later.getMessage().endswith("(49 repeats suppressed since the last one shown)")


def test_different_messages_and_facilities_are_not_repeats() -> None:
    flt = LibrdkafkaFilter(clock=Clock())
    assert flt.filter(_record(40, "FAIL", REFUSED + "Connection refused"))
    assert flt.filter(_record(40, "FAIL", "[thrd:b2:9092/bootstrap]: b2:9092/bootstrap: Connect failed"))
    assert flt.filter(_record(40, "ERROR", REFUSED + "Connection refused"))
    assert not flt.filter(_record(40, "FAIL", REFUSED + "Connection refused"))


def test_a_multi_line_message_becomes_one_line_and_json_stays_valid() -> None:
    record = _record(30, "SASL", 'bad "quote" \\ and\nsecond line\ttab \x00')
    assert LibrdkafkaFilter(clock=Clock()).filter(record)
    assert "\n" not in record.getMessage()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["logger"] == LIBRDKAFKA_LOGGER and entry["level"] == "WARNING"
    assert entry["facility"] == "SASL" and entry["client"] == "rdkafka#consumer-1"
    assert entry["message"].startswith('SASL [rdkafka#consumer-1] bad "quote"')


def test_the_key_table_stays_bounded() -> None:
    clock = Clock()
    flt = LibrdkafkaFilter(repeat_s=1.0, clock=clock)
    for n in range(5000):
        clock.now += 0.001
        flt.filter(_record(20, "X", f"message {'a' * (n % 7)}{n}"))  # digits alone differ: distinct
    assert len(flt._seen) <= 1024


def test_every_client_configuration_carries_the_one_logger() -> None:
    from heimdall_stream import clients

    settings = Settings()
    logger = librdkafka_logger()
    assert logger is logging.getLogger(LIBRDKAFKA_LOGGER)
    assert sum(isinstance(f, LibrdkafkaFilter) for f in librdkafka_logger().filters) == 1
    for config in (
        clients.consumer_config(settings),
        clients.producer_config(settings),
        clients.idempotent_producer_config(settings),
        clients.capture_producer_config(settings),
        clients.reader_config(settings),
        clients.admin_config(settings),
    ):
        assert config["logger"] is logger


def test_records_reach_the_handlers_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = librdkafka_logger()
    logger.addHandler(handler)
    try:
        logger.log(40, "%s [%s] %s", "FAIL", "rdkafka#producer-2", "one\ntwo")
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "FAIL [rdkafka#producer-2] one two" and entry["level"] == "ERROR"
