"""The predict API: HTTP requests scored by the stream's batch path, micro-batched together."""
