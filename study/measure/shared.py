"""Memory the judge and a runner process both map, and what crosses it: views and output facts.

An `Arena` is one block of memory (a shared-memory file on the CPU, a CUDA allocation exported by
IPC handle on a GPU) that the judge allocates and sends to one runner process once per trial. What
travels afterwards is only a `Desc` (offset, dtype, shape, strides): plain data that both sides
turn into a tensor view of the same bytes. The judge writes inputs into a runner's input arena and
reads its outputs from that runner's output arena (it copies them into its own memory before it
judges them); the runner never sees any other memory of the judge.

`describe(out)` is what the runner says about a returned object (its type, shape, strides, ...):
computed with unbound `torch.Tensor` methods, so that an instance attribute named like a method
(`out.stride = ...`, `out.detach = ...`) is never what answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernels import as_dtype, dtype_name

ALIGN = 256  # bytes: cudaMalloc's alignment, and more than any vector load needs


@dataclass(frozen=True)
class Desc:
    """A tensor view of an arena: `offset` in bytes, dtype name, shape, strides in elements."""

    offset: int
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def view(base: torch.Tensor, desc: Desc) -> torch.Tensor:
    """The tensor `desc` names in the uint8 arena `base` (no copy)."""
    dtype = as_dtype(desc.dtype)
    size = torch.empty((), dtype=dtype).element_size()
    if desc.offset % size:
        raise ValueError(f"offset {desc.offset} is not a multiple of {size}")
    extent = 1 + sum((n - 1) * s for n, s in zip(desc.shape, desc.stride, strict=True))
    extent = extent if all(desc.shape) else 0
    if desc.offset + extent * size > base.numel():
        raise ValueError(f"view {desc} runs past the arena ({base.numel()} bytes)")
    flat = base[desc.offset : desc.offset + max(extent, 1) * size].view(dtype)
    return flat.as_strided(desc.shape, desc.stride)


class Arena:
    """A block of `nbytes` on `device` that a runner process maps too, carved into views."""

    def __init__(self, nbytes: int, device: str) -> None:
        self.base = torch.empty(max(int(nbytes), ALIGN), dtype=torch.uint8, device=device)
        if self.base.device.type == "cpu":
            self.base.share_memory_()
        self.used = 0

    @property
    def nbytes(self) -> int:
        return self.base.numel()

    def alloc(self, nbytes: int) -> int:
        """A fresh aligned region; its offset. Regions are never reused within a trial."""
        offset = -(-self.used // ALIGN) * ALIGN
        if offset + nbytes > self.nbytes:
            raise MemoryError(f"arena of {self.nbytes} bytes is full ({offset} + {nbytes})")
        self.used = offset + nbytes
        return offset

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Desc:
        """A contiguous region for a (shape, dtype) tensor, e.g. an output slot."""
        numel = 1
        for n in shape:
            numel *= n
        size = torch.empty((), dtype=dtype).element_size()
        stride = torch.empty(shape, dtype=dtype, device="meta").stride()
        return Desc(self.alloc(max(numel, 1) * size), dtype_name(dtype), tuple(shape), stride)

    def place(self, tensors: tuple[torch.Tensor, ...]) -> tuple[Desc, ...]:
        """Copy `tensors` into fresh regions, keeping their layout: each storage once, each
        tensor as the same view of it (strided views stay strided; two tensors of one storage,
        as l2=kv gives K and V, stay in one region)."""
        regions: dict[int, int] = {}
        descs = []
        for t in tensors:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in regions:
                regions[key] = self.alloc(storage.nbytes())
                raw = torch.empty(0, dtype=torch.uint8, device=t.device).set_(storage)
                self.base[regions[key] : regions[key] + storage.nbytes()].copy_(raw)
            descs.append(
                Desc(
                    regions[key] + t.storage_offset() * t.element_size(),
                    dtype_name(t.dtype),
                    tuple(t.shape),
                    tuple(t.stride()),
                )
            )
        return tuple(descs)

    def view(self, desc: Desc) -> torch.Tensor:
        return view(self.base, desc)


def storage_bytes(tensors: tuple[torch.Tensor, ...]) -> int:
    """What `Arena.place(tensors)` takes, alignment included."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(-(-n // ALIGN) * ALIGN + ALIGN for n in seen.values())


def describe(out: Any) -> dict[str, Any]:
    """Facts about a returned object that the judge checks (shape, dtype, strides, ...).

    Read through `torch.Tensor`'s own descriptors and unbound methods, never through the object's
    attributes, which a candidate may have replaced per instance.
    """
    if not isinstance(out, torch.Tensor):
        return {"tensor": False, "type": type(out).__name__}
    plain = type(out) is torch.Tensor
    meta: dict[str, Any] = {"tensor": True, "type": type(out).__name__, "plain": plain}
    if not plain:
        return meta
    shape, stride = tuple(torch.Tensor.size(out)), tuple(torch.Tensor.stride(out))
    meta.update(
        shape=shape,
        dtype=dtype_name(out.dtype),
        device=str(out.device),
        requires_grad=bool(out.requires_grad),
        stride=stride,
        dense=dense(shape, stride),
        ptr=torch.Tensor.untyped_storage(out).data_ptr(),
    )
    return meta


def dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """The elements cover one block of memory once each (kernels.dense_non_overlapping, on the
    numbers rather than on a tensor's own, replaceable, `stride()`)."""
    expected = 1
    for step, size in sorted((s, n) for s, n in zip(stride, shape, strict=True) if n != 1):
        if step != expected:
            return False
        expected *= size
    return True


def copy_out(slot: torch.Tensor, out: Any, meta: dict[str, Any]) -> bool:
    """Copy `out` into `slot` where it is a plain tensor of exactly the slot's shape and dtype
    (a smaller shape would broadcast into it); False where nothing was copied."""
    if not meta.get("plain") or meta.get("dtype") != dtype_name(slot.dtype):
        return False
    if tuple(meta.get("shape", ())) != tuple(slot.shape) or meta.get("device") != str(slot.device):
        return False
    with torch.no_grad():
        torch.Tensor.copy_(slot, out)
    return True
