"""The live map: a web page of the results as they are committed (``heimdall-stream map``)."""
