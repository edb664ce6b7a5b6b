"""Logging set-up: one line per lifecycle event, as text or JSON, librdkafka's log included.

librdkafka logs through the ``heimdall.librdkafka`` logger (``librdkafka_logger``) rather than
straight to stderr: confluent-kafka hands each line to ``Logger.log`` with the syslog level
already mapped (0-2 CRITICAL, 3 ERROR, 4 WARNING, 5-6 INFO, 7 DEBUG) and the arguments
``facility, client name, message``.  A broker that is down makes every client log a failed
connection many times a second, so the same facility and message pass at most once per
``LIBRDKAFKA_REPEAT_S``; the next one that passes says how many were suppressed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

LIBRDKAFKA_LOGGER = "heimdall.librdkafka"
LIBRDKAFKA_REPEAT_S = 10.0
# Record attributes the JSON lines carry besides time, level, logger and message.
_EXTRA_FIELDS = ("facility", "client", "suppressed")
# Parts of a librdkafka line that change from one repeat to the next ("after 0ms in state
# CONNECT, 3 identical error(s) suppressed"): left out of the key that decides what a repeat is.
_VOLATILE = re.compile(r"\d+ ?ms\b|\d+ identical error\(s\) suppressed")
_MAX_KEYS = 1024


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as JSON."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: getattr(record, key) for key in _EXTRA_FIELDS if hasattr(record, key)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class LibrdkafkaFilter(logging.Filter):
    """Turns confluent-kafka's log calls into clean records and drops repeats within a window.

    A record keeps its mapped level; its message becomes ``FACILITY [client] text`` on one line,
    with ``facility`` and ``client`` as attributes (fields of the JSON lines).  Of the lines
    with the same facility and text (timings aside) one passes per ``repeat_s`` seconds; the
    one that passes after a window with repeats carries ``suppressed`` = how many were dropped.
    """

    def __init__(self, repeat_s: float = LIBRDKAFKA_REPEAT_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.repeat_s = repeat_s
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (when it last passed, repeats dropped since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record; False for a repeat inside its window."""
        facility, client, text = _parts(record)
        now = self._clock()
        key = (facility, _VOLATILE.sub("#", text))
        with self._lock:
            last, dropped = self._seen.get(key, (-float("inf"), 0))
            if now - last < self.repeat_s:
                self._seen[key] = (last, dropped + 1)
                return False
            if len(self._seen) >= _MAX_KEYS:
                self._forget(now)
            self._seen[key] = (now, 0)
        record.msg = f"{facility} [{client}] {text}" if facility else text
        record.args = None
        record.facility, record.client = facility, client
        if dropped:
            record.suppressed = dropped
            record.msg += f" ({dropped} repeats suppressed since the last one shown)"
        return True

    def _forget(self, now: float) -> None:
        """Drop keys whose window is over, or all of them, so the table stays small."""
        stale = [key for key, (last, _dropped) in self._seen.items() if now - last >= self.repeat_s]
        for key in stale or list(self._seen):
            del self._seen[key]


def _parts(record: logging.LogRecord) -> tuple[str, str, str]:
    """(facility, client, text) of a record from confluent-kafka, one line each."""
    args = record.args
    if isinstance(args, tuple) and len(args) == 3 and record.msg == "%s [%s] %s":
        facility, client, text = (str(arg) for arg in args)
    else:  # logged by something else: keep its message as it is
        facility, client, text = "", "", record.getMessage()
    return facility, client, " ".join(text.split())


def librdkafka_logger() -> logging.Logger:
    """The one logger every Kafka client of the project logs through (``logger`` config key)."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(f, LibrdkafkaFilter) for f in logger.filters):
        logger.addFilter(LibrdkafkaFilter())
    return logger


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # MLflow gives its loggers a text handler of their own when it is imported, unless told not
    # to: its lines then come through this handler, in this format (JSON lines stay JSON).
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    # Third-party chatter stays at WARNING unless asked for.
    for noisy in ("mlflow", "urllib3", "alembic", "botocore", "git"):
        logger = logging.getLogger(noisy)
        logger.setLevel(max(logging.WARNING, root.level))
        if noisy in ("mlflow", "alembic"):  # already imported: undo what it set up
            logger.handlers.clear()
            logger.propagate = True
