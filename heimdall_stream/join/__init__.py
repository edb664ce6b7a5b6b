"""The per-receiver path: ReceiverCapture parts joined into capture sets on event time, exactly once."""
