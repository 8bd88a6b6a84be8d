"""Shared by the hostile plugins: the correct answer, computed honestly in the input dtype."""

from __future__ import annotations

import torch

from kernels import plain_attention


def honest(problem, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return plain_attention(q, k, v, problem.causal, problem.scale)
