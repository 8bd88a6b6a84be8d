"""kernels: the gene pool of attention forward implementations, usable without the study.

Public API (see docs/architecture.md): `register`, `variants`, `Problem`, `reference_attention`,
`plain_attention`, `load_plugin`; `tuned` (a study's winners in a model) and `mutations` (how a
winner is run) are submodules. `cpu_name`, `device_name`, `name_slug`, `dense_non_overlapping`,
`expand_kv` and `qk_matmul` are public for the study's device fingerprint and correctness gate,
which must compute them exactly as the kernels do; so are the blocks the reference and the plain
yardstick work in on long problems (`attention_blocks`, `reference_blocks`, `plain_blocks`,
`kv_heads`) and the free memory they are sized from (`free_bytes`, `block_budget`).
"""

from kernels._device import cpu_name, device_name, name_slug
from kernels._memory import block_budget, free_bytes
from kernels._problem import DTYPES_NAMES, Problem, as_dtype, dense_non_overlapping, dtype_name
from kernels._reference import (
    attention_blocks,
    expand_kv,
    kv_heads,
    plain_attention,
    plain_blocks,
    qk_matmul,
    reference_attention,
    reference_blocks,
)
from kernels._registry import PluginError, Variant, load_plugin, register, skipped_modules, variants

__all__ = [
    "DTYPES_NAMES",
    "PluginError",
    "Problem",
    "Variant",
    "as_dtype",
    "attention_blocks",
    "block_budget",
    "cpu_name",
    "dense_non_overlapping",
    "device_name",
    "dtype_name",
    "expand_kv",
    "free_bytes",
    "kv_heads",
    "load_plugin",
    "name_slug",
    "plain_attention",
    "plain_blocks",
    "qk_matmul",
    "reference_attention",
    "reference_blocks",
    "register",
    "skipped_modules",
    "variants",
]
