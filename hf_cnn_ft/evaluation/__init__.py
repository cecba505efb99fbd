"""Metric math, pictures, test-time views, evaluate, predict and the text report."""
