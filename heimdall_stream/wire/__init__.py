"""The wire format: every record as a frozen dataclass (``messages``) and its Avro codec (``codec``)."""
