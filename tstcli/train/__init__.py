"""Training: the loop (the one place that knows about phases), schedule, checkpoints, metrics, progress."""
