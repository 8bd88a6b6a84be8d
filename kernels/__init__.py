"""kernels: the gene pool of attention forward implementations.

Public API (see DESIGN.md): `register`, `variants`, `Problem`, `reference_attention`,
`plain_attention`, `load_plugin`.
"""

from kernels._problem import DTYPES_NAMES, Problem, as_dtype, dtype_name
from kernels._reference import plain_attention, reference_attention
from kernels._registry import PluginError, Variant, load_plugin, register, skipped_modules, variants

__all__ = [
    "DTYPES_NAMES",
    "PluginError",
    "Problem",
    "Variant",
    "as_dtype",
    "dtype_name",
    "load_plugin",
    "plain_attention",
    "reference_attention",
    "register",
    "skipped_modules",
    "variants",
]
