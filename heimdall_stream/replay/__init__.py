"""Replay: score a range of the input topic with candidate versions, away from the live output."""
