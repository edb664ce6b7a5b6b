"""Models: the contract, input kinds, onnxruntime sessions, the MLflow registry cache and weighted routing."""
