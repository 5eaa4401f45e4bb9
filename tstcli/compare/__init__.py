"""Compare runs: held-out loss against compute, and the equal-loss speed-up (the paper's headline metric)."""
