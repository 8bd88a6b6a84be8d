"""kernels: the gene pool of attention forward implementations, usable without the study.

Public API (see docs/architecture.md): `register`, `variants`, `Problem`, `reference_attention`,
`plain_attention`, `load_plugin`; `tuned` (a study's winners in a model) and `mutations` (how a
winner is run) are submodules. `cpu_name`, `device_name`, `name_slug`, `dense_non_overlapping`,
`expand_kv` and `qk_matmul` are public for the study's device fingerprint and correctness gate,
which must compute them exactly as the kernels do.
"""

from kernels._device import cpu_name, device_name, name_slug
from kernels._problem import DTYPES_NAMES, Problem, as_dtype, dense_non_overlapping, dtype_name
from kernels._reference import expand_kv, plain_attention, qk_matmul, reference_attention
from kernels._registry import PluginError, Variant, load_plugin, register, skipped_modules, variants

__all__ = [
    "DTYPES_NAMES",
    "PluginError",
    "Problem",
    "Variant",
    "as_dtype",
    "cpu_name",
    "dense_non_overlapping",
    "device_name",
    "dtype_name",
    "expand_kv",
    "load_plugin",
    "name_slug",
    "plain_attention",
    "qk_matmul",
    "reference_attention",
    "register",
    "skipped_modules",
    "variants",
]
