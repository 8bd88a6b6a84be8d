"""Measuring one candidate: worker (the process), harness (build, gate, time), inputs, gate,
guard, timing, env (the fingerprint); see docs/architecture.md."""
