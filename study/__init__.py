"""kernel-study: an Optuna search for the fastest correct attention forward pass."""
