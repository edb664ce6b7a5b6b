"""The batch path as values: decode, route, validate, dedup, cache, infer, finish, shadow; no Kafka."""
