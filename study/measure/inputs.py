"""The judge's inputs: fresh random q, k, v per trial, never zeros, from a secret seed.

Each distribution is chosen to expose a class of wrong kernel (see `make_inputs`); the gate
(study/measure/gate.py) draws at least one set of each. Timed calls get new values every
repetition from an `InputPool`. Every seed is `secret_seed(secret, ...)`: keyed by a secret that
only the judge holds, so that a candidate cannot compute the inputs it will be given (and their
answers) from the study seed and the trial number.
"""

from __future__ import annotations

import hashlib
import random

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


def secret_seed(secret: bytes, seed: int, purpose: str) -> int:
    """A 40-bit seed for `purpose`, derived from the trial's `seed` under the judge's `secret`
    (40 bits: a trillion seeds, and room for the gate's `seed * 1009 + set` in a torch seed)."""
    digest = hashlib.blake2b(f"{seed}/{purpose}".encode(), key=secret, digest_size=5).digest()
    return int.from_bytes(digest, "little")


class InputPool:
    """New values for every timed call at the cost of one copy, none of them predictable.

    One random pool per input, twice its size, drawn once per trial (normal values, never zero,
    like make_inputs' `normal`); each repetition reads a window of each pool at secret random
    offsets, viewed with the buffer's own shape and strides (any layout). Drawing fresh normals
    for a 4k-token K/V cache every repetition took longer than the attention it fed; a window
    costs a copy. Every repetition's values come from the same distribution, so nothing tells
    a candidate which outputs will be checked.
    """

    def __init__(self, like: tuple[torch.Tensor, ...], seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.like = [(tuple(t.shape), tuple(t.stride()), t.numel()) for t in like]
        self.pools = []
        for t in like:
            pool = torch.randn(2 * t.numel(), generator=gen)
            pool = torch.where(pool == 0, torch.full_like(pool, 1e-3), pool)
            self.pools.append(pool.to(t.dtype).to(t.device))
        self.rng = random.Random(seed)

    def draw(self) -> tuple[int, ...]:
        """Secret offsets of one repetition's windows (any element: the values are copied into
        the buffers, whose own alignment is what a kernel sees)."""
        return tuple(self.rng.randrange(n + 1) for _, _, n in self.like)

    def values(self, offsets: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """The inputs of the windows at `offsets` (views of the pools, no copy)."""
        return tuple(
            pool.as_strided(shape, stride, offset)
            for pool, (shape, stride, _), offset in zip(self.pools, self.like, offsets, strict=True)
        )
