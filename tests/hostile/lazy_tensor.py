"""A lazy tensor: a subclass whose values are computed when someone reads them."""

import torch

from kernels import register
from tests.hostile._common import honest


class LazyAttention(torch.Tensor):
    thunk = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            args = [a._materialise() if isinstance(a, LazyAttention) else a for a in args]
            return func(*args, **kwargs)

    def _materialise(self):
        with torch._C.DisableTorchFunctionSubclass():
            if self.thunk is not None:
                self.copy_(self.thunk())
                self.thunk = None
            return self.as_subclass(torch.Tensor)


@register("hostile_lazy_tensor")
def build(problem):
    def run(q, k, v):
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device).as_subclass(LazyAttention)
        out.thunk = lambda: honest(problem, q, k, v)
        return out

    return run
