"""Use a study's winners in a model: `attn = tuned.load("tuned.json"); out = attn(q, k, v)`.

The table is written by `python -m study.export` (format below). `attn` takes SDPA's arguments
(`attn_mask, dropout_p, is_causal, scale, enable_gqa`). For a call whose problem signature
(shapes, dtype, `is_causal`, scale: `Problem.signature()`) has an entry for the device of `q`, it
builds the winning variant once with its winning params, caches it, and calls it with the
winning mutations applied as the study applied them (`layout=bshd_contiguous`: the inputs are
made contiguous inside the call; `threads=N`: the CPU thread count for the call, restored after;
`layout=bhsd`/`bshd` only say which layout the inputs had when measured: any layout is accepted).
Anything else runs `torch.nn.functional.scaled_dot_product_attention`, with one log line per
reason and signature: an unknown signature or device type, an `attn_mask`, `dropout_p > 0`,
inputs that need gradients (the tuned variants are forward-only), a variant that cannot be
imported or built here.

Only a confirmed winner is dispatched to: an entry whose verdict is `keep_sdpa` runs SDPA,
and so does an entry whose re-timed interval (`retimed_interval`, the 95% interval of its
paired speedup over SDPA re-timed in a fresh process) does not lie above 1, or, in an entry
without an interval (an older export), whose re-timed or study speedup is below 1; one log
line says why.

Device matching: the entry measured on the same device model (the study's device slug) first;
otherwise the fastest entry measured on the same device type (cpu or cuda), with a log line that
it was tuned elsewhere (correct there, maybe not the fastest here). Plugin variants: the table
stores the plugin file's path, imported on first use.

In a Hugging Face transformers model: `register_transformers(table, name)` (kernels/hf.py).

Table format (JSON):
    {"format": "kernel-study/tuned", "version": 1,
     "entries": {<signature>: {<device slug>: {"variant", "spec", "plugin", "device_type",
                 "device_name", "problem", "verdict" ("winner" | "keep_sdpa"), "reason",
                 "retimed_interval", "value_us", "latency_us", "baseline_latency_us",
                 "paired_speedup", "speedup_ci", ...}}}}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kernels._device import device_name, name_slug
from kernels._problem import DTYPES, Problem
from kernels._registry import load_plugin, variants
from kernels.mutations import Applied

log = logging.getLogger(__name__)

FORMAT = "kernel-study/tuned"
VERSION = 1


def device_slug(device: torch.device) -> str:
    """The slug of `device`'s model: a table's per-device key, as the study computes it too."""
    return name_slug(device_name(device))


def refusal(entry: dict[str, Any]) -> str | None:
    """Why an entry must not be dispatched to (SDPA runs instead), or None."""
    if entry.get("verdict") == "keep_sdpa":
        return f"the study's verdict is to keep SDPA ({entry.get('reason', '')})"
    interval = entry.get("retimed_interval")
    if interval and interval[0] is not None:
        if not interval[0] > 1.0:
            return (
                f"{entry.get('label', entry.get('variant'))} re-timed "
                f"[{interval[0]:.2f}, {interval[1]:.2f}] x SDPA, not above 1"
            )
        return None
    retimed = entry.get("retimed") or {}
    for speedup in (retimed.get("speedup"), entry.get("speedup")):
        if speedup is not None and speedup < 1.0:
            return f"{entry.get('label', entry.get('variant'))} measured {speedup:.2f}x SDPA"
    return None


def signature_of(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float | None
) -> str | None:
    """Problem.signature() of a call, or None where the tensors are not an attention problem."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        return None
    if q.dtype not in DTYPES.values() or k.dtype != q.dtype or v.dtype != q.dtype:
        return None
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or q.shape[1] % k.shape[1]:
        return None
    try:
        problem = Problem(
            batch=q.shape[0],
            heads_q=q.shape[1],
            heads_kv=k.shape[1],
            seq_q=q.shape[2],
            seq_kv=k.shape[2],
            head_dim=q.shape[3],
            dtype=q.dtype,
            causal=bool(is_causal),
            scale=scale,
        )
    except ValueError:
        return None
    return problem.signature()


class TunedAttention:
    """SDPA's signature; dispatches to the table's winner where one applies."""

    refusal = staticmethod(refusal)  # for kernels/hf.py, which must not import this module

    def __init__(self, table: dict[str, Any], source: str = "<table>") -> None:
        if table.get("format") != FORMAT:
            raise ValueError(f"{source} is not a kernel-study tuning table (format {FORMAT})")
        self.source = source
        self.entries: dict[str, dict[str, dict[str, Any]]] = table.get("entries", {})
        self._runners: dict[tuple[str, str], Callable[..., torch.Tensor] | None] = {}
        self._logged: set[tuple[str, str]] = set()
        self._slugs: dict[str, str] = {}

    # -- lookup -----------------------------------------------------------------------------
    @staticmethod
    def signature(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float | None
    ) -> str | None:
        """The table key of a call (`signature_of`), for callers that hold only the object."""
        return signature_of(q, k, v, is_causal, scale)

    def _slug(self, device: torch.device) -> str:
        key = str(device)
        if key not in self._slugs:
            self._slugs[key] = device_slug(device)
        return self._slugs[key]

    def entry_for(self, signature: str, device: torch.device) -> tuple[dict | None, str]:
        """(entry, note): the entry for this device, or None and why not."""
        per_device = self.entries.get(signature)
        if not per_device:
            return None, f"no tuned entry for {signature}"
        here = self._slug(device)
        if here in per_device:
            return per_device[here], ""
        same_type = [e for e in per_device.values() if e.get("device_type") == device.type]
        if not same_type:
            return None, f"{signature} was tuned on {sorted(per_device)} only, not on {device.type}"
        best = min(same_type, key=lambda e: e.get("latency_us") or float("inf"))
        return best, f"{signature} was tuned on {best.get('device')}, running on {here}"

    def _say(self, signature: str, message: str) -> None:
        if (signature, message) not in self._logged:
            self._logged.add((signature, message))
            log.warning("kernels.tuned: %s", message)

    # -- building -------------------------------------------------------------------------------
    def _build(self, entry: dict[str, Any], device: torch.device) -> Callable[..., torch.Tensor]:
        spec = entry["spec"]
        if entry.get("plugin"):
            # load_plugin refuses a second file registering the same name, so the variant found
            # below is this file's, never another plugin's namesake
            added = load_plugin(entry["plugin"])
            if spec["variant"] not in added:
                raise LookupError(f"{entry['plugin']} does not register {spec['variant']}")
        registry = variants()
        if spec["variant"] not in registry:
            raise LookupError(
                f"variant {spec['variant']} is not registered (plugin: {entry.get('plugin')})"
            )
        variant = registry[spec["variant"]]
        problem = Problem.from_dict(entry["problem"]).with_device(str(device))
        reason = variant.supports(problem)
        if reason:
            raise LookupError(f"{spec['variant']} cannot run here: {reason}")
        applied = Applied(dict(spec.get("mutations", {})), problem)
        with applied.context():
            built = variant.build(problem, **spec.get("params", {}))
        run = applied.wrap(built)

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with applied.context():
                return run(q, k, v)

        call.entry = entry  # type: ignore[attr-defined]
        return call

    def runner(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        is_causal: bool = False,
        scale: float | None = None,
    ) -> Callable[..., torch.Tensor] | None:
        """The built winner for this call (built once, cached), or None: SDPA runs."""
        signature = signature_of(q, k, v, is_causal, scale)
        if signature is None:
            self._say(str(tuple(q.shape)), f"shapes {tuple(q.shape)}, {tuple(k.shape)} unknown")
            return None
        key = (signature, str(q.device))
        if key in self._runners:
            return self._runners[key]
        entry, note = self.entry_for(signature, q.device)
        runner = None
        refused = refusal(entry) if entry is not None else None
        if entry is None:
            self._say(signature, f"{note}: using SDPA")
        elif refused:
            self._say(signature, f"{signature}: {refused}: using SDPA")
        else:
            if note:
                self._say(signature, note)
            try:
                runner = self._build(entry, q.device)
            except Exception as exc:
                self._say(signature, f"{signature}: cannot build {entry.get('variant')} ({exc})")
        self._runners[key] = runner
        return runner

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        why = None
        if attn_mask is not None:
            why = "an attn_mask"
        elif dropout_p:
            why = "dropout_p > 0"
        elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            why = "inputs that need gradients (tuned variants are forward-only)"
        elif q.dim() == 4 and k.dim() == 4 and q.shape[1] != k.shape[1] and not enable_gqa:
            why = "Hq != Hkv without enable_gqa"
        run = None
        if why is None:
            run = self.runner(q, k, v, is_causal, scale)
        else:
            self._say(why, f"a call with {why}: using SDPA")
        if run is not None:
            return run(q, k, v)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )

    def explain(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        is_causal: bool = False,
        scale: float | None = None,
    ) -> str:
        """What a call with these tensors runs: the winner's label, or `sdpa`."""
        run = self.runner(q, k, v, is_causal, scale)
        if run is None:
            return "sdpa"
        entry = run.entry  # type: ignore[attr-defined]
        return str(entry.get("label") or entry["variant"])


def load(path: str | Path) -> TunedAttention:
    """Read a tuning table written by `python -m study.export`."""
    file = Path(path)
    return TunedAttention(json.loads(file.read_text()), str(file))


def register_transformers(table: str | Path | TunedAttention, name: str = "kernel_study") -> Any:
    """Register the table as a Hugging Face transformers attention implementation `name`.

    `AutoModelForCausalLM.from_config(cfg, attn_implementation=name)` then runs the winners for
    the table's signatures and transformers' SDPA path for every other call. Returns the backend
    (kernels/hf.py): `print(backend.summary())` shows the calls per path. Needs transformers
    (`pip install 'kernel-study[hf]'`), imported only here.
    """
    from kernels import hf

    return hf.register(table if isinstance(table, TunedAttention) else load(table), name)
