"""The control: an honest candidate that must end COMPLETE beside the hostile ones."""

import torch

from kernels import plain_attention, register


@register("hostile_control_honest")
def build(problem):
    def run(q, k, v):
        return plain_attention(q, k, v, problem.causal, problem.scale)

    return run


@register("hostile_control_float64")
def build_float64(problem):
    """Honest, more precise than asked: the whole computation in float64, cast back."""

    def run(q, k, v):
        out = plain_attention(q.double(), k.double(), v.double(), problem.causal, problem.scale)
        return out.to(q.dtype)

    return run


@register("hostile_control_thread_pool")
def build_thread_pool(problem):
    """Honest, on several threads: one task per query head, all joined before returning."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="honest-pool")

    def run(q, k, v):
        out = torch.empty_like(q)
        group = q.shape[1] // k.shape[1]

        def head(h):
            kv = h // group
            out[:, h : h + 1] = plain_attention(
                q[:, h : h + 1], k[:, kv : kv + 1], v[:, kv : kv + 1], problem.causal, problem.scale
            )

        list(pool.map(head, range(q.shape[1])))
        return out

    return run


@register("hostile_control_online_softmax")
def build_online(problem):
    """Honest, FlashAttention's way: key blocks with a running max and sum (online softmax),
    accumulated in float32."""
    block = 16

    def run(q, k, v):
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1).float(), v.repeat_interleave(group, 1).float()
        q32 = q.float() * problem.scale
        seq_q, seq_kv = q.shape[2], k.shape[2]
        peak = torch.full(q.shape[:3] + (1,), float("-inf"), device=q.device)
        total = torch.zeros_like(peak)
        acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        rows = torch.arange(seq_q, device=q.device)[:, None]
        for start in range(0, seq_kv, block):
            scores = q32 @ k[:, :, start : start + block].transpose(-1, -2)
            if problem.causal:
                cols = torch.arange(start, min(start + block, seq_kv), device=q.device)[None, :]
                scores = scores.masked_fill(cols > rows, float("-inf"))
            # every row sees key 0 (top-left causal), so the first block's max is finite
            new_peak = torch.maximum(peak, scores.amax(-1, keepdim=True))
            weights = torch.exp(scores - new_peak)
            rescale = torch.exp(peak - new_peak)  # 0 on the first block (peak = -inf)
            total = total * rescale + weights.sum(-1, keepdim=True)
            acc = acc * rescale + weights @ v[:, :, start : start + block]
            peak = new_peak
        return (acc / total).to(q.dtype)

    return run
