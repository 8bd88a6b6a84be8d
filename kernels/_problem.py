"""The attention problem: shapes, dtype, mask and device, and the inputs drawn for it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
DTYPES_NAMES: tuple[str, ...] = tuple(DTYPES)
_SHORT = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
}


def as_dtype(value: str | torch.dtype) -> torch.dtype:
    """Accept `torch.float16`, `"float16"` or `"torch.float16"`."""
    if isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype {value!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Problem:
    """One attention forward problem.

    q: (batch, heads_q, seq_q, head_dim); k, v: (batch, heads_kv, seq_kv, head_dim).
    `causal` is SDPA's `is_causal`: the top-left-aligned lower-triangular mask, so query i sees
    keys 0..i whatever seq_q and seq_kv are. `scale` defaults to head_dim ** -0.5.
    """

    batch: int
    heads_q: int
    heads_kv: int
    seq_q: int
    seq_kv: int
    head_dim: int
    dtype: torch.dtype = torch.float16
    causal: bool = False
    scale: float | None = None
    device: str = "cpu"
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        object.__setattr__(self, "device", str(torch.device(self.device)))
        if self.scale is None:
            object.__setattr__(self, "scale", self.head_dim**-0.5)
        for name in ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"problem.{name} must be a positive integer, got {value!r}")
        if self.heads_q % self.heads_kv:
            raise ValueError(
                f"problem.heads_q ({self.heads_q}) must be a multiple of heads_kv ({self.heads_kv})"
            )

    @property
    def gqa(self) -> bool:
        return self.heads_q != self.heads_kv

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def flops(self) -> float:
        """4*B*Hq*Sq*Skv*D, halved for causal (the FlashAttention/Triton/cuDNN convention)."""
        total = 4.0 * self.batch * self.heads_q * self.seq_q * self.seq_kv * self.head_dim
        return total / 2 if self.causal else total

    def min_bytes(self) -> int:
        """Q, K, V read and O written once: the memory floor."""
        elem = torch.finfo(self.dtype).bits // 8
        q_and_o = 2 * self.batch * self.heads_q * self.seq_q * self.head_dim
        k_and_v = 2 * self.batch * self.heads_kv * self.seq_kv * self.head_dim
        return elem * (q_and_o + k_and_v)

    def signature(self) -> str:
        """Shape, dtype, mask and scale, without the device: the key of a tuning table."""
        heads = f"H{self.heads_q}" if not self.gqa else f"H{self.heads_q}kv{self.heads_kv}"
        seq = f"S{self.seq_q}" if self.seq_q == self.seq_kv else f"Sq{self.seq_q}kv{self.seq_kv}"
        mask = "causal" if self.causal else "full"
        sig = f"B{self.batch}-{heads}-{seq}-D{self.head_dim}-{_SHORT[self.dtype]}-{mask}"
        if abs(self.scale - self.head_dim**-0.5) > 1e-12:
            sig += f"-scale{self.scale:.6g}"
        return sig

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["dtype"] = dtype_name(self.dtype)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_device(self, device: str) -> Problem:
        return dataclasses.replace(self, device=device)

    def q_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads_q, self.seq_q, self.head_dim)

    def kv_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads_kv, self.seq_kv, self.head_dim)


def dense_non_overlapping(t: torch.Tensor) -> bool:
    """True when the elements cover one block of memory once each (any order of dimensions).

    What an output must be (no broadcast, no holes) and what K and V must be to be moved into
    one allocation with their strides kept.
    """
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape, strict=True) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True
