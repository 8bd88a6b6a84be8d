"""A Hugging Face transformers attention backend from a tuning table (the `[hf]` extra).

    backend = kernels.tuned.register_transformers("tuned.json", name="kernel_study")
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="kernel_study")
    model.generate(...)
    print(backend.summary())          # calls per path: which tuned winner, or why SDPA

`register` puts one function into transformers' `AttentionInterface` (and transformers' SDPA
mask function into its `AttentionMaskInterface` under the same name: without a mask function
transformers passes no mask at all to a custom backend, padding included). The function takes
exactly what `transformers.integrations.sdpa_attention.sdpa_attention_forward` takes, decides
the call's effective problem the way that function does, and runs the table's winner when the
table has one for that problem on this device; every other call is handed to
`sdpa_attention_forward` itself, unchanged, so the fallback is transformers' SDPA path to the
bit.

The effective problem, as sdpa_attention_forward computes it: q is (B, Hq, Sq, D), k and v
(B, Hkv, Skv, D) with Hq = Hkv * module.num_key_value_groups (our variants take grouped K/V as
they are, where SDPA gets `enable_gqa`); `is_causal` is the call's value, else the module's
(default True), and holds only for Sq > 1 without a mask (a decode step is full attention over
the cache); an empty-StaticCache prefill (causal, Skv > Sq, no mask) attends to the first Sq keys
only. A mask that allows exactly what `is_causal` (top-left aligned) or no mask allows, for every
batch row and head, is that problem (older transformers and compiled paths materialise such
masks); any other mask (padding, sliding windows, packed sequences) goes to SDPA. So do dropout
> 0, a position bias, a softcap, inputs that need gradients, and shapes or heads that do not
form an attention problem.

The name clash: the kernel hub's PyPI package is also imported as `kernels`; transformers imports
hub functions from whichever `kernels` is importable when the hub's distribution metadata has a
version it accepts. `register` turns that failure into one line that says so (README).
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from typing import Any

import torch

DEFAULT_NAME = "kernel_study"
TUNED = "tuned"

SDPA = "sdpa"


class HubClash(ImportError):
    """transformers took kernel-study's `kernels` for the kernel hub's package."""


def _import_transformers() -> tuple[Any, Any, Any, Any]:
    """(AttentionInterface, AttentionMaskInterface, sdpa_mask, sdpa_attention_forward)."""
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as exc:
        if "kernels" not in str(exc):
            raise ImportError(
                f"the transformers backend needs transformers (pip install 'kernel-study[hf]'): "
                f"{exc}"
            ) from exc
        try:
            hub = importlib.metadata.version("kernels")
        except importlib.metadata.PackageNotFoundError:
            hub = "?"
        raise HubClash(
            f"transformers imports the kernel hub's package `kernels` ({hub} is installed) but "
            "`import kernels` finds kernel-study's: keep the two in separate environments "
            "(README: transformers)"
        ) from exc
    return AttentionInterface, AttentionMaskInterface, sdpa_mask, sdpa_attention_forward


def mask_pattern(mask: torch.Tensor, seq_q: int, seq_kv: int) -> str | None:
    """`"causal"` or `"full"` where a boolean or additive mask allows exactly what SDPA's
    `is_causal=True` (top-left aligned) or no mask allows, for every row and head; else None."""
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != (seq_q, seq_kv):
        return None
    if mask.dtype == torch.bool:
        allowed = mask
    elif mask.is_floating_point():
        allowed = mask == 0
        blocked = mask <= torch.finfo(mask.dtype).min
        if not bool(torch.all(allowed | blocked)):
            return None  # a bias, not a mask
    else:
        return None
    if bool(torch.all(allowed)):
        return "full"
    causal = torch.ones(seq_q, seq_kv, dtype=torch.bool, device=mask.device).tril()
    if bool(torch.all(allowed == causal)):
        return "causal"
    return None


class TransformersBackend:
    """The attention function transformers calls, with a count of calls per path.

    `counts` maps a path to its calls: `tuned: <signature> -> <winner>` or `sdpa: <why>`;
    `tuned_calls` and `sdpa_calls` sum them; `summary()` is the table a user prints.
    """

    def __init__(self, attn: Any, name: str, sdpa_forward: Any) -> None:
        """`attn`: a `kernels.tuned.TunedAttention` (not imported here: tuned imports this)."""
        self.attn = attn
        self.name = name
        self.sdpa_forward = sdpa_forward
        self.counts: Counter[str] = Counter()

    @property
    def tuned_calls(self) -> int:
        return sum(n for path, n in self.counts.items() if path.startswith(TUNED))

    @property
    def sdpa_calls(self) -> int:
        return sum(n for path, n in self.counts.items() if path.startswith(SDPA))

    def reset(self) -> None:
        self.counts.clear()

    def summary(self) -> str:
        lines = [f"attention '{self.name}' ({self.attn.source}): calls per path"]
        for path, n in sorted(self.counts.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {n:8d}  {path}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def plan(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float,
        scaling: float | None,
        is_causal: bool | None,
        position_bias: torch.Tensor | None,
        softcap: Any,
    ) -> tuple[str, tuple[torch.Tensor, torch.Tensor, bool] | None]:
        """(why SDPA runs, None) or ("", (k, v, causal)): the call's effective problem."""
        if position_bias is not None:
            return "a position bias", None
        if softcap is not None:
            return "a softcap", None
        if dropout:
            return "dropout > 0", None
        if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
            return "inputs that need gradients (tuned variants are forward-only)", None
        groups = int(getattr(module, "num_key_value_groups", 1) or 1)
        if query.dim() != 4 or key.dim() != 4 or query.shape[1] != key.shape[1] * groups:
            return "heads that do not match the module's key/value groups", None
        seq_q, seq_kv = query.shape[2], key.shape[2]
        wants_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if attention_mask is None:
            causal = bool(seq_q > 1 and wants_causal)
            if causal and seq_kv > seq_q:  # an empty StaticCache's prefill, as SDPA's path does
                key, value = key[:, :, :seq_q], value[:, :, :seq_q]
            return "", (key, value, causal)
        pattern = mask_pattern(attention_mask, seq_q, seq_kv)
        if pattern is None:
            return "an attention_mask", None
        return "", (key, value, pattern == "causal")

    def __call__(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        position_bias: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        why, problem = self.plan(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout,
            scaling,
            is_causal,
            position_bias,
            kwargs.get("softcap"),
        )
        run = None
        if problem is not None:
            k, v, causal = problem
            signature = self.attn.signature(query, k, v, causal, scaling)
            if signature is None:
                why = "tensors that are no attention problem of the table"
            elif (entry := self.attn.entry_for(signature, query.device)[0]) is None:
                why = "a shape, dtype or device the table has no entry for"
            elif refused := self.attn.refusal(entry):
                why = f"{signature}: {refused}"
            else:
                run = self.attn.runner(query, k, v, causal, scaling)
                if run is None:
                    why = f"{signature}: its winner cannot be built here (see the log)"
        if run is None:
            self.counts[f"{SDPA}: {why}"] += 1
            return self.sdpa_forward(
                module,
                query,
                key,
                value,
                attention_mask,
                dropout=dropout,
                scaling=scaling,
                is_causal=is_causal,
                position_bias=position_bias,
                **kwargs,
            )
        entry = run.entry  # type: ignore[attr-defined]
        self.counts[f"{TUNED}: {signature} -> {entry.get('label') or entry['variant']}"] += 1
        out = run(query, k, v)
        # (B, Hq, Sq, D) -> (B, Sq, Hq, D) as transformers expects; always a copy, since a winner
        # measured with out=prealloc or graph=on hands back memory its next call overwrites
        return out.transpose(1, 2).clone(memory_format=torch.contiguous_format), None


def register(attn: Any, name: str = DEFAULT_NAME) -> TransformersBackend:
    """Register a loaded table's winners (`kernels.tuned.load(...)`) as transformers attention
    `name`; returns the backend. `kernels.tuned.register_transformers` takes a path too."""
    attention, masks, sdpa_mask, sdpa_forward = _import_transformers()
    backend = TransformersBackend(attn, name, sdpa_forward)
    attention.register(name, backend)
    masks.register(name, sdpa_mask)
    return backend
