"""Peer 2: a Quix Streams application, one message at a time, at-least-once or exactly-once.

A ``StreamingDataFrame`` over the input topic (values as raw bytes) applies the per-capture
path (decode → validate → prepare/infer as a batch of 1 → finish) to every message, drops dead
letters (the benchmark offers none) and sends each result's encoded value to the output topic.
``--guarantee`` is Quix's ``processing_guarantee``: at-least-once (results produced, offsets
committed at each checkpoint) or exactly-once (results and offsets in one transaction per
checkpoint, so read_committed readers see results only when the checkpoint commits).
``--commit-interval`` is the checkpoint period (Quix's default is 5 s; the benchmark uses a short
one so exactly-once latency is not dominated by the checkpoint wait).  Stops on SIGTERM.

    python -m bench.peers.quix_app --guarantee exactly-once --bootstrap ... --model f.onnx ...
"""

from __future__ import annotations

import logging
import tempfile
import time

from quixstreams import Application, message_context  # type: ignore[import-not-found, unused-ignore]

from bench.peers.scoring import Scorer, arguments
from heimdall_stream.processing.records import InputRecord, Result

log = logging.getLogger("bench.peers.quix_app")


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--guarantee", choices=["at-least-once", "exactly-once"], default="at-least-once")
    parser.add_argument("--commit-interval", type=float, default=0.1, help="checkpoint period, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scorer = Scorer(args.model, name=args.model_name, version=args.model_version, batch_prefix="quix")
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee=args.guarantee,
        commit_interval=args.commit_interval,
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        loglevel="WARNING",
        auto_create_topics=False,
        # The producer's batching the other systems use; Quix's idempotent defaults otherwise.
        producer_extra_config={"linger.ms": 5},
    )
    source = app.topic(args.input, value_deserializer="bytes", key_deserializer="bytes")
    sink = app.topic(args.output, value_serializer="bytes", key_serializer="bytes")

    def localise(value: bytes) -> bytes | None:
        context = message_context()
        record = InputRecord(context.topic, context.partition, context.offset, None, value, time.monotonic())
        outcome = scorer.score(record)
        return outcome.value if isinstance(outcome, Result) else None

    frame = app.dataframe(source).apply(localise).filter(lambda value: value is not None)
    frame.to_topic(sink)
    log.info("consuming %s as group %s (%s)", args.input, args.group, args.guarantee)
    app.run()
    log.info("stopped: %d scored, %d dead letters", scorer.scored, scorer.dead)


if __name__ == "__main__":
    main()
