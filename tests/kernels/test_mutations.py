"""Each mutation changes what really runs: the mechanism is shown to take effect, and toggling it
changes the code path. GPU-only mechanisms (CUDA graphs, the L2 window) are tested on a GPU."""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import kernels
from kernels import Problem, _cudart
from kernels import mutations as mut
from kernels.builtin import compiled
from study.space import Candidate, build_space
from tests.conftest import ROOT

CPU = Problem(batch=1, heads_q=2, heads_kv=2, seq_q=16, seq_kv=24, head_dim=8, dtype="float32")


def inputs(problem: Problem, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(problem.q_shape(), generator=gen, dtype=torch.float32)
    k = torch.randn(problem.kv_shape(), generator=gen, dtype=torch.float32)
    v = torch.randn(problem.kv_shape(), generator=gen, dtype=torch.float32)
    return tuple(t.to(problem.dtype).to(problem.device) for t in (q, k, v))  # type: ignore[return-value]


class Recorder:
    """A candidate that records what it was given (strides, pointers, out=, threads)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.calls: list[dict] = []

    def _record(self, q, k, v, out=None) -> torch.Tensor:  # noqa: ANN001
        self.calls.append(
            {
                "strides": [t.stride() for t in (q, k, v)],
                "ptrs": [t.data_ptr() for t in (q, k, v)],
                "out": out,
                "threads": torch.get_num_threads(),
            }
        )
        result = kernels.plain_attention(q, k, v, self.problem.causal, self.problem.scale)
        if out is None:
            return result
        out.copy_(result)
        return out

    def __call__(self, q, k, v):  # noqa: ANN001, ANN204
        return self._record(q, k, v)


class OutRecorder(Recorder):
    def __call__(self, q, k, v, *, out=None):  # noqa: ANN001, ANN204
        return self._record(q, k, v, out=out)


def bhsd_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    b, h, s, d = shape
    return (h * s * d, s * d, d, 1)


def bshd_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    b, h, s, d = shape
    return (s * h * d, d, h * d, 1)


# -- layout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "bshd_contiguous"])
def test_layout_strides_the_candidate_sees(layout: str) -> None:
    applied = mut.Applied({"layout": layout}, CPU)
    prepared = applied.prepare_inputs(inputs(CPU))
    rec = Recorder(CPU)
    out = applied.wrap(rec)(*prepared)
    seen = rec.calls[0]["strides"]
    given = [t.stride() for t in prepared]
    shapes = [CPU.q_shape(), CPU.kv_shape(), CPU.kv_shape()]
    if layout == "bhsd":
        assert given == seen == [bhsd_strides(s) for s in shapes]
    else:  # the timed callable is handed (B,S,H,D) storage viewed as (B,H,S,D)
        assert given == [bshd_strides(s) for s in shapes]
        expected = bhsd_strides if layout == "bshd_contiguous" else bshd_strides
        assert seen == [expected(s) for s in shapes]
    copied = rec.calls[0]["ptrs"] != [t.data_ptr() for t in prepared]
    # bshd_contiguous copies inside the wrapped (timed) call, and only it does
    assert copied == (layout == "bshd_contiguous")
    ref = kernels.reference_attention(*prepared, CPU.causal, CPU.scale)
    assert torch.allclose(out.double(), ref, atol=1e-5)


# -- threads --------------------------------------------------------------------------------------
def test_threads_set_for_the_call_and_restored() -> None:
    before = torch.get_num_threads()
    for value, expected in ((1, 1), (0, before)):
        applied = mut.Applied({"threads": value}, CPU)
        rec = Recorder(CPU)
        run = applied.wrap(rec)
        with applied.context():
            run(*inputs(CPU))
        assert rec.calls[0]["threads"] == expected
        assert torch.get_num_threads() == before
    assert mut.make("threads", [0, 2]).supports(CPU.with_device("cuda"), 2)


POOL_PROBE = """
import os, sys, threading, time, torch
from kernels import Problem
from kernels import mutations as mut
torch.set_num_threads(2)
main = threading.get_native_id()
problem = Problem(batch=1, heads_q=2, heads_kv=2, seq_q=16, seq_kv=24, head_dim=8, dtype="float32")
q = torch.randn(problem.q_shape())

def slices():  # per thread other than this one: how many times it was given a CPU
    counts = {}
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != main:
            with open(f"/proc/self/task/{tid}/schedstat") as fh:
                counts[tid] = int(fh.read().split()[2])
    return counts

def pool_ran(call):
    time.sleep(0.05)  # the pool threads go to sleep
    before = slices()
    call()
    after = slices()
    return any(after.get(tid, 0) > n for tid, n in before.items())

def by_hand():  # what the mutation did before: the switch back left to whatever runs next
    torch.set_num_threads(1)
    torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.set_num_threads(2)

def mutated():
    applied = mut.Applied({"threads": 1}, problem)
    run = applied.wrap(lambda *qkv: torch.nn.functional.scaled_dot_product_attention(*qkv))
    with applied.context():
        run(q, q, q)

torch.empty(1 << 20, dtype=torch.uint8).fill_(1)  # the pool exists
print(sum(pool_ran(by_hand) for _ in range(3)), sum(pool_ran(mutated) for _ in range(3)))
"""


def test_threads_bring_the_restored_pool_up_inside_the_call(tmp_path) -> None:
    """The first parallel region after `set_num_threads` pays for the switch (milliseconds on
    a loaded machine): a threads=1 call that left it to the next request hid that cost from its
    own time, and the judge's wall clock pruned honest plugins `timing_inconsistent`. Seen from
    outside, in a fresh process: the pool's threads run before the mutated call returns (their
    scheduler counts in /proc rise), and do not where the switch is made by hand (the control:
    the probe can tell the two apart)."""
    if os.cpu_count() is None or os.cpu_count() < 2:
        pytest.skip("one CPU: no pool to bring up")
    if not Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").exists():
        pytest.skip("no /proc/<pid>/task/<tid>/schedstat here")
    script = tmp_path / "pool_probe.py"
    script.write_text(POOL_PROBE)
    # passive waits: a pool thread sleeps as soon as a region ends, never spins on into the
    # control's window (a spinning thread preempted on a loaded machine is scheduled later)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    by_hand, mutated = (int(n) for n in done.stdout.split())
    assert (by_hand, mutated) == (0, 3)


# -- out=prealloc ---------------------------------------------------------------------------------
def test_prealloc_passes_one_buffer_per_input_set() -> None:
    applied = mut.Applied({"out": "prealloc"}, CPU)
    rec = OutRecorder(CPU)
    run = applied.wrap(rec)
    first, second = inputs(CPU, 1), inputs(CPU, 2)
    out1 = run(*first)
    out1_again = run(*first)
    out2 = run(*second)
    assert rec.calls[0]["out"] is out1 and out1_again is out1  # allocated once, reused
    assert out2.data_ptr() != out1.data_ptr()  # one buffer per input-buffer set
    ref = kernels.reference_attention(*second, CPU.causal, CPU.scale)
    assert torch.allclose(out2.double(), ref, atol=1e-5)
    # refilled in place: new values, same buffer, fresh result
    with torch.no_grad():
        for buf, fresh in zip(first, inputs(CPU, 3), strict=True):
            buf.copy_(fresh)
    out1_new = run(*first)
    assert out1_new is out1
    assert torch.allclose(
        out1_new.double(), kernels.reference_attention(*first, CPU.causal, CPU.scale), atol=1e-5
    )
    # toggled off: the run allocates its own output, no out= is passed
    rec_off = OutRecorder(CPU)
    mut.Applied({"out": "none"}, CPU).wrap(rec_off)(*first)
    assert rec_off.calls[0]["out"] is None
    assert mut.Applied({"out": "prealloc"}, CPU).reuses_output
    assert not mut.Applied({"out": "none", "layout": "bshd"}, CPU).reuses_output


def test_prealloc_buffer_starts_poisoned_and_gate_version_is_fresh() -> None:
    seen = []

    def lazy(q, k, v, *, out=None):  # noqa: ANN001, ANN202
        seen.append(out.clone())
        out[..., :1] = 0.0  # writes only part of the output
        return out

    applied = mut.Applied({"out": "prealloc"}, CPU)
    result = applied.wrap(lazy)(*inputs(CPU))
    assert torch.isnan(seen[0]).all()  # a kernel that skips elements leaves NaN behind
    assert torch.isnan(result[..., 1:]).all()
    gate_run = applied.wrap_for_gate(lazy)
    a, b = gate_run(*inputs(CPU)), gate_run(*inputs(CPU))
    assert a.data_ptr() != b.data_ptr()  # the gate sees fresh memory per call
    assert torch.isnan(seen[-1]).all()


def test_prealloc_needs_a_run_that_takes_out() -> None:
    registry = kernels.variants()
    out = mut.make("out", ["none", "prealloc"])
    assert out.applies(registry["plain"], "prealloc")
    assert out.applies(registry["plain"], "none") is None
    assert out.applies(registry["compiled_plain"], "prealloc") is None
    with pytest.raises(TypeError, match="out="):
        mut.Applied({"out": "prealloc"}, CPU).wrap(Recorder(CPU))
    # the layout copy forwards out= (and the signature) to the run it wraps
    rec = OutRecorder(CPU)
    run = mut.Applied({"out": "prealloc", "layout": "bshd_contiguous"}, CPU).wrap(rec)
    run(*mut.Applied({"layout": "bshd"}, CPU).prepare_inputs(inputs(CPU)))
    assert rec.calls[0]["out"] is not None
    assert rec.calls[0]["strides"][0] == bhsd_strides(CPU.q_shape())


def test_space_leaves_out_inapplicable_choices() -> None:
    registry = kernels.variants()
    cfg = {
        "variants": ["plain", "compiled_plain"],
        "mutations": {"out": ["none", "prealloc"], "graph": ["off", "on"], "l2": ["off", "kv"]},
    }
    space = build_space(CPU, cfg, registry, lambda names: dict.fromkeys(names))
    assert space.mutations == {"out": ["none", "prealloc"], "graph": ["off"], "l2": ["off"]}
    assert "CUDA" in space.excluded["mutation graph=['on']"]
    assert "CUDA" in space.excluded["mutation l2=['kv']"]
    assert space.invalid_reason(Candidate("plain", {}, {"out": "prealloc"}))
    assert (
        space.invalid_reason(Candidate("compiled_plain", {"mode": "default"}, {"out": "none"}))
        is None
    )
    assert (
        space.invalid_reason(Candidate("compiled_plain", {"mode": "default"}, {"out": "prealloc"}))
        is None
    )
    combos = {(c.variant, c.mutations["out"]) for c in space.candidates()}
    assert ("plain", "prealloc") not in combos and ("compiled_plain", "prealloc") in combos


def test_unknown_choices_are_refused() -> None:
    for name, bad in (("graph", "maybe"), ("l2", "q"), ("out", "stack"), ("layout", "sbhd")):
        with pytest.raises(KeyError):
            mut.make(name, [bad])


# -- l2=kv: K and V in one allocation (runs anywhere), the window itself on a GPU ------------------
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_l2_places_k_and_v_in_one_allocation(layout: str) -> None:
    applied = mut.Applied({"layout": layout, "l2": "kv"}, CPU)
    original = mut.Applied({"layout": layout}, CPU).prepare_inputs(inputs(CPU))
    q, k, v = applied.prepare_inputs(inputs(CPU))
    nbytes = k.numel() * k.element_size()
    assert v.data_ptr() == k.data_ptr() + nbytes  # adjacent: one window covers both
    assert k.stride() == original[1].stride() and v.stride() == original[2].stride()
    assert torch.equal(k, original[1]) and torch.equal(v, original[2])
    assert _cudart.kv_span(k, v) == (k.data_ptr(), 2 * nbytes)


def test_graph_and_l2_need_cuda() -> None:
    assert "CUDA" in mut.make("graph", ["on"]).supports(CPU, "on")
    assert "CUDA" in mut.make("l2", ["kv"]).supports(CPU, "kv")
    assert mut.make("graph", ["off"]).supports(CPU, "off") is None


GPU = Problem(
    batch=1, heads_q=4, heads_kv=4, seq_q=256, seq_kv=256, head_dim=64, dtype="float16",
    device="cuda",
)  # fmt: skip


@pytest.mark.gpu
def test_graph_captures_once_per_buffer_set_and_replays() -> None:
    rec = Recorder(GPU)
    applied = mut.Applied({"graph": "on"}, GPU)
    run = applied.wrap(rec)
    assert isinstance(run, mut.GraphRunner)
    first, second = inputs(GPU, 1), inputs(GPU, 2)
    out = run(*first)
    eager_calls = len(rec.calls)  # warm-up + capture
    out_again = run(*first)
    assert len(rec.calls) == eager_calls  # replay: Python code of the candidate did not run
    assert out_again.data_ptr() == out.data_ptr()
    run(*second)
    assert run.captures == 2
    with torch.no_grad():
        for buf, fresh in zip(first, inputs(GPU, 3), strict=True):
            buf.copy_(fresh)
    replayed = run(*first).clone()
    ref = kernels.reference_attention(*first, GPU.causal, GPU.scale)
    assert (replayed.double() - ref).abs().max() < 1e-2  # the replay read the refilled buffers
    # the SDPA baseline is replayed from a graph too; off: eager, no capture
    assert isinstance(applied.wrap_baseline(lambda q, k, v: q), mut.GraphRunner)
    assert mut.Applied({"graph": "off"}, GPU).wrap(rec) is rec
    gate_run = applied.wrap_for_gate(rec)
    a, b = gate_run(*first), gate_run(*first)
    assert a.data_ptr() != b.data_ptr()  # the gate's version: fresh memory per call


@pytest.mark.gpu
def test_l2_window_is_set_during_the_call_and_restored() -> None:
    pytest.importorskip("cuda.bindings.runtime")
    device = torch.cuda.current_device()
    limit_before = _cudart.persisting_limit(device)
    seen = []

    def probe(q, k, v):  # noqa: ANN001, ANN202
        seen.append((_cudart.stream_window(), _cudart.persisting_limit(device)))
        return kernels.plain_attention(q, k, v, GPU.causal, GPU.scale)

    applied = mut.Applied({"l2": "kv"}, GPU)
    q, k, v = applied.prepare_inputs(inputs(GPU))
    run = applied.wrap(probe)
    run(q, k, v)
    (base, nbytes), limit = seen[0]
    assert base == k.data_ptr() and nbytes == min(2 * k.numel() * 2, run.max_window)
    assert limit >= min(run.max_persist, 2 * GPU.min_bytes()) and limit > 0
    assert _cudart.stream_window()[1] == 0  # cleared after the call
    del run
    gc.collect()
    assert _cudart.persisting_limit(device) == limit_before  # restored when the candidate is freed
    seen.clear()
    mut.Applied({"l2": "off"}, GPU).wrap(probe)(q, k, v)
    assert seen[0][0][1] == 0  # toggled off: no window


@pytest.mark.gpu
def test_l2_carve_out_is_set_on_the_problems_device() -> None:
    """`cuda:N` names the device whose carve-out is raised, whatever the current device is (the
    last GPU; on a one-GPU machine that is the current one, and the calls still name it)."""
    pytest.importorskip("cuda.bindings.runtime")
    last = torch.cuda.device_count() - 1
    current = torch.cuda.current_device()
    others = {d: _cudart.persisting_limit(d) for d in range(last)}
    before = _cudart.persisting_limit(last)
    problem = dataclasses.replace(GPU, device=f"cuda:{last}")
    run = _cudart.L2Runner(lambda q, k, v: q, problem)
    assert _cudart.persisting_limit(last) >= min(run.max_persist, 2 * problem.min_bytes()) > 0
    assert {d: _cudart.persisting_limit(d) for d in range(last)} == others
    assert torch.cuda.current_device() == current  # the current device is left alone
    run.finalizer()
    assert _cudart.persisting_limit(last) == before


@pytest.mark.gpu
def test_cold_timer_resets_persisting_lines_before_each_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flush is an ordinary write: lines the window made persisting survive it. The cold
    timer resets them (on the problem's device) before every flush; the hot one does not."""
    pytest.importorskip("cuda.bindings.runtime")
    from study.measure import timing

    resets: list[int] = []
    real = _cudart.reset_persisting_lines
    monkeypatch.setattr(_cudart, "reset_persisting_lines", lambda d: (resets.append(d), real(d)))
    applied = mut.Applied({"l2": "kv"}, GPU)
    args = applied.prepare_inputs(inputs(GPU))
    run = applied.wrap(lambda q, k, v: kernels.plain_attention(q, k, v, False, GPU.scale))
    timer = timing.Timer(GPU, cold_cache=True)
    for _ in range(3):
        timer.time_call(run, args)
    assert resets == [_cudart.device_index(GPU.device)] * 3
    assert timing.Timer(GPU, cold_cache=False).reset_l2 is None


# -- the device-wide calls name their device (logic checked on any machine) ----------------------
class RecordingRuntime:
    """Stands in for cuda.bindings.runtime where there is no GPU: a current device, per-device
    persisting limits and resets, in the bindings' (err, value) convention."""

    class cudaLimit:  # noqa: N801 - the binding's own name
        cudaLimitPersistingL2CacheSize = "persisting-l2"

    def __init__(self, devices: int = 2, current: int = 0, max_persist: int = 1 << 20) -> None:
        self.current = current
        self.limits = dict.fromkeys(range(devices), 0)
        self.resets: list[int] = []
        self.max_persist = max_persist

    def cudaGetDevice(self):  # noqa: ANN201, N802
        return (0, self.current)

    def cudaSetDevice(self, device: int):  # noqa: ANN201, N802
        self.current = device
        return (0,)

    def cudaDeviceGetLimit(self, limit: str):  # noqa: ANN201, N802
        assert limit == "persisting-l2"
        return (0, self.limits[self.current])

    def cudaDeviceSetLimit(self, limit: str, nbytes: int):  # noqa: ANN201, N802
        assert limit == "persisting-l2"
        self.limits[self.current] = nbytes
        return (0,)

    def cudaGetDeviceProperties(self, device: int):  # noqa: ANN201, N802
        props = SimpleNamespace(
            persistingL2CacheMaxSize=self.max_persist, accessPolicyMaxWindowSize=1 << 27
        )
        return (0, props)

    def cudaCtxResetPersistingL2Cache(self):  # noqa: ANN201, N802
        self.resets.append(self.current)
        return (0,)


def test_l2_runner_raises_and_restores_the_carve_out_of_its_own_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = RecordingRuntime(devices=2, current=0)
    monkeypatch.setattr(_cudart, "cudart", lambda: rt)
    problem = dataclasses.replace(GPU, device="cuda:1")
    run = _cudart.L2Runner(lambda q, k, v: q, problem)
    assert run.device == 1
    assert rt.limits == {0: 0, 1: min(1 << 20, 2 * problem.min_bytes())}
    assert rt.current == 0  # the runtime's current device is given back
    run.finalizer()
    assert rt.limits == {0: 0, 1: 0} and rt.resets == [1] and rt.current == 0


def test_persisting_reset_acts_on_the_named_device(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = RecordingRuntime(devices=4, current=2)
    monkeypatch.setattr(_cudart, "cudart", lambda: rt)
    reset = mut.persisting_reset("cuda:3")
    assert reset is not None
    reset()
    reset()
    assert rt.resets == [3, 3] and rt.current == 2
    assert mut.persisting_reset("cpu") is None
    rt.max_persist = 0  # no carve-out (MIG, or an older GPU): nothing can persist, no reset
    assert mut.persisting_reset("cuda:3") is None
    assert _cudart.device_index("cuda:3") == 3 and _cudart.device_index(1) == 1
    with pytest.raises(ValueError, match="not a CUDA device"):
        _cudart.device_index("cpu")


def test_persisting_reset_is_none_without_cuda_python(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("No module named 'cuda'")

    monkeypatch.setattr(_cudart, "cudart", missing)
    assert mut.persisting_reset("cuda:0") is None


# -- what the space leaves out before a study starts ---------------------------------------------
def test_space_leaves_out_unverified_combinations_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """graph=on with mode=reduce-overhead, and graph=on with l2=kv, never ran on a GPU: a GPU
    space offers each part but not the combination, and names it with its reason."""
    monkeypatch.setattr(mut, "cudart", lambda: RecordingRuntime())  # l2=kv's bindings "there"
    registry = kernels.variants()
    cfg = {
        "variants": ["compiled_plain", "sdpa"],
        "mutations": {"graph": ["off", "on"], "l2": ["off", "kv"]},
    }
    space = build_space(GPU, cfg, registry, lambda names: dict.fromkeys(names))
    assert space.mutations == {"graph": ["off", "on"], "l2": ["off", "kv"]}
    graph_mode = space.excluded["combination graph=on with mode=reduce-overhead"]
    graph_l2 = space.excluded["combination graph=on with l2=kv"]
    assert graph_mode.startswith("never run on a GPU") and "capture inside a capture" in graph_mode
    assert graph_l2.startswith("never run on a GPU") and "replay" in graph_l2
    found = {(c.variant, c.params.get("mode"), c.mutations["graph"], c.mutations["l2"])
             for c in space.candidates()}  # fmt: skip
    expected = {
        (name, mode, graph, l2)
        for name, modes in (("sdpa", [None]), ("compiled_plain", compiled.MODES))
        for mode in modes
        for graph in ("off", "on")
        for l2 in ("off", "kv")
        if not (graph == "on" and (l2 == "kv" or mode == "reduce-overhead"))
    }
    assert found == expected and len(found) == 3 + 8
    reason = space.invalid_reason(Candidate("sdpa", {}, {"graph": "on", "l2": "kv"}))
    assert reason == f"graph=on with l2=kv: {graph_l2}"
    on_ro = Candidate("compiled_plain", {"mode": "reduce-overhead"}, {"graph": "on", "l2": "off"})
    assert space.invalid_reason(on_ro) == f"graph=on with mode=reduce-overhead: {graph_mode}"
    off_ro = Candidate("compiled_plain", {"mode": "reduce-overhead"}, {"graph": "off", "l2": "kv"})
    assert space.invalid_reason(off_ro) is None
    # a space that cannot offer a combination does not mention it
    cpu_space = build_space(CPU, cfg, registry, lambda names: dict.fromkeys(names))
    assert not [name for name in cpu_space.excluded if name.startswith("combination")]
    no_graph = build_space(GPU, {**cfg, "mutations": {"l2": ["off", "kv"]}}, registry,
                           lambda names: dict.fromkeys(names))  # fmt: skip
    assert not [name for name in no_graph.excluded if name.startswith("combination")]


def test_variants_whose_score_matrix_cannot_fit_are_left_out() -> None:
    """plain and compiled_plain hold the whole score matrix: where it cannot fit in the device's
    free memory they say so (the worker asks them before the study starts) instead of failing
    every trial with out-of-memory; chunked holds one block and stays."""
    registry = kernels.variants()
    huge = Problem(batch=64, heads_q=64, heads_kv=64, seq_q=1 << 16, seq_kv=1 << 16,
                   head_dim=64, dtype="bfloat16")  # fmt: skip
    scores_gib = 64 * 64 * (1 << 32) * (2 + 8) / 1024**3  # 160 TiB: more than any machine
    for name in ("plain", "compiled_plain"):
        reason = registry[name].supports(huge)
        assert reason is not None and f"need about {scores_gib:.1f} GiB" in reason, reason
    assert registry["plain"].supports(CPU) is None
    assert registry["chunked"].supports(huge) is None
    space = build_space(
        huge,
        {"variants": ["plain", "chunked"]},
        registry,
        lambda names: {n: registry[n].supports(huge) for n in names},
    )
    assert [v.name for v in space.variants] == ["chunked"]
    assert "the whole score matrix (4096 x 65536 x 65536)" in space.excluded["plain"]
