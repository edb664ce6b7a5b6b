"""Live calibration: results joined with known truths, coverage and error per model version as metrics."""
