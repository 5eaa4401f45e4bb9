"""Evaluation: held-out loss and multiple-choice benchmarks scored the lm-evaluation-harness way."""
