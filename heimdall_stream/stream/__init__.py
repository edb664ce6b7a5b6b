"""The Kafka side of the serving path: the consume → process → commit loop, delivery, batching, start-up."""
