"""Hand-written peers of ``heimdall-stream run`` for the comparison benchmark (``bench.compare``).

Each peer is a separate process that consumes the same input topic with its own group and
writes results to its own output topic, calling the project's own per-capture functions one
capture at a time (``bench.peers.scoring``): the way an application written directly against a
Kafka client or a stream-processing library would.
"""
