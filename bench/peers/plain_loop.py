"""Peer 1: a plain confluent-kafka loop, one message at a time, at-least-once.

poll one message → decode → validate → prepare/infer (batch of 1) → finish → produce the
result (idempotent producer, ``acks=all``, ``linger.ms=5`` like the consumer's).  Offsets are
committed at least once: every ``COMMIT_EVERY`` messages or ``COMMIT_INTERVAL_S`` seconds,
whichever comes first, the loop flushes the producer (every result produced so far is then
acknowledged) and only then commits the consumer's position, so a crash can repeat results
but never lose one.  The same happens when partitions are revoked and at shutdown (SIGTERM).
Dead letters are counted and dropped (the benchmark offers none).

    python -m bench.peers.plain_loop --bootstrap ... --input ... --output ... --group ... --model f.onnx
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer

from bench.peers.scoring import Scorer, arguments
from heimdall_stream.processing.records import InputRecord, Result

COMMIT_EVERY = 100
COMMIT_INTERVAL_S = 1.0
log = logging.getLogger("bench.peers.plain_loop")


def record_of(message: Message) -> InputRecord:
    """The pipeline's view of a consumed message (a fetched message has topic, partition, offset)."""
    partition, offset = message.partition(), message.offset()
    return InputRecord(
        message.topic() or "",
        -1 if partition is None else partition,
        -1 if offset is None else offset,
        message.key(),
        message.value(),
        time.monotonic(),
    )


def main() -> None:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scorer = Scorer(args.model, name=args.model_name, version=args.model_version, batch_prefix="plain")
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    uncommitted = 0
    last_commit = time.monotonic()

    def commit() -> None:
        nonlocal uncommitted, last_commit
        if uncommitted:
            if producer.flush(30) > 0:
                raise RuntimeError("results not acknowledged within 30 s; not committing")
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as exc:  # nothing to commit after a revoke: harmless here
                log.warning("commit failed: %s", exc)
        uncommitted, last_commit = 0, time.monotonic()

    def on_revoke(_consumer: Any, _partitions: Any) -> None:
        commit()

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            raise RuntimeError(f"result not delivered: {error}")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer.subscribe([args.input], on_revoke=on_revoke)
    log.info("consuming %s as group %s", args.input, args.group)
    try:
        while not stop.is_set():
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                outcome = scorer.score(record_of(message))
                if isinstance(outcome, Result):
                    producer.produce(
                        args.output, key=message.key(), value=outcome.value, on_delivery=on_delivery
                    )
                uncommitted += 1
            elif message is not None:
                log.warning("consumer error: %s", message.error())
            producer.poll(0)
            if uncommitted >= COMMIT_EVERY or time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                commit()
        commit()
    finally:
        consumer.close()
        log.info("stopped: %d scored, %d dead letters", scorer.scored, scorer.dead)


if __name__ == "__main__":
    main()
