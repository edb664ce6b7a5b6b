"""heimdall-stream: real-time transmitter localization from SDR IQ captures on Kafka.

The package turns Avro ``IqCapture`` messages into ``Localization`` results (position,
calibrated uncertainty ellipse, GeoJSON) with ONNX models from an MLflow registry.
"""

__version__ = "0.1.0"
