"""The gate's inputs: fresh random q, k, v per trial, one set per distribution, never zeros.

Each distribution is chosen to expose a class of wrong kernel (see `make_inputs`); the gate
(study/measure/gate.py) draws at least one set of each, the harness's spot checks a few more.
"""

from __future__ import annotations

import torch

from kernels import Problem

# normal, uniform, peaked and offset as before; tail: large values in the last key/value rows
# (dropped tail keys or missing tail masking show); large: scores far beyond exp's range
# (missing max-subtraction overflows to NaN/Inf).
DISTRIBUTIONS = ("normal", "uniform", "peaked", "offset", "tail", "large")


def make_inputs(
    problem: Problem, seed: int, distribution: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh random q, k, v (B,H,S,D contiguous) drawn on the CPU, then moved: same on any device.

    normal: N(0,1). uniform: U(-1,1) (where "mean of V" cheats thrive under loose bounds).
    peaked: large q/k so that softmax is nearly one-hot. offset: keys with a shared offset and
    values far from zero mean (where missing max-subtraction and dropped keys show). tail: the
    last eighth of the keys (at least one) carry values far from the rest and keys the queries
    like, so that a kernel that drops or masks out the tail block is far off. large: q and k so
    large that exp() of raw scores overflows.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    q, k, v = draw(problem.q_shape()), draw(problem.kv_shape()), draw(problem.kv_shape())
    if distribution == "uniform":
        q, k, v = (torch.rand(t.shape, generator=gen) * 2 - 1 for t in (q, k, v))
    elif distribution == "peaked":
        q, k = q * 3.0, k * 3.0
    elif distribution == "offset":
        k = k + 2.0
        v = v * 2.0 + 3.0
    elif distribution == "tail":
        tail = max(1, problem.seq_kv // 8)
        v[:, :, -tail:] += 8.0
        # make the tail keys attractive: align them with the mean query direction
        direction = q.mean(dim=(1, 2), keepdim=True)  # (B,1,1,D)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        k[:, :, -tail:] += 2.0 * direction
    elif distribution == "large":
        q, k = q * 12.0, k * 12.0
    elif distribution != "normal":
        raise ValueError(f"unknown distribution {distribution!r}")
    # never exact zeros (a zero input hides a candidate that ignores it)
    q, k, v = (torch.where(t == 0, torch.full_like(t, 1e-3), t) for t in (q, k, v))
    return tuple(t.to(problem.dtype).to(problem.device) for t in (q, k, v))  # type: ignore[return-value]
