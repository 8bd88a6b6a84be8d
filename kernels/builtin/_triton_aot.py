"""triton_flash compiled ahead of time for a GPU that is not here (sm_90 by default).

`triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32))`
runs Triton's passes and the bundled ptxas without a GPU and returns the PTX and the kernel's
metadata (shared memory). The arguments come from the launch plan that build() uses
(triton_flash.launch_plan) with meta tensors standing in for q, k, v and out, bound by Triton's
own argument binder, so the signature, the constexprs and the specialisations (a stride of 1, an
int divisible by 16, 16-byte aligned pointers) are those of a real launch on that GPU.

`as_device()` makes triton_flash.valid() answer as it would on that GPU, so that the Hopper-only
switches (tma, warp_specialize) and the shared-memory limit are judged for it.

Used by tests/kernels/test_triton_hopper.py (CI, no GPU) and bench/hopper_compile.py.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import hashlib
import inspect
import itertools
import multiprocessing
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from kernels._problem import Problem
from kernels.builtin import triton_flash as tf

SM90 = tf.DeviceFacts(capability=(9, 0), shared_per_block=232_448)  # H100/H200: 227 KiB opt-in


class CompileFailed(Exception):
    """The compiler refused a configuration; the message is its reason, on one line."""


@dataclass(frozen=True)
class Compiled:
    """What the compiler made of one configuration."""

    ptx: str  # debug line info stripped: equal code gives equal text
    shared: int  # bytes of shared memory the launch asks for
    seconds: float

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.ptx.encode()).hexdigest()[:12]

    @property
    def wgmma(self) -> bool:
        """Hopper's warpgroup MMA (fp16/bf16 dots should use it on sm_90)."""
        return "wgmma.mma_async" in self.ptx

    @property
    def bulk_tensor(self) -> bool:
        """TMA bulk tensor copies (what tma=True is for)."""
        return "cp.async.bulk.tensor" in self.ptx


_DEBUG_LINE = re.compile(r"^\s*(\.loc|\.file)\b|^\$L__(tmp|func_begin|func_end)\d+:")


def strip_debug(ptx: str) -> str:
    """PTX without line info, debug sections and comments: what runs, as text."""
    cut = ptx.find(".section\t.debug")
    if cut < 0:
        cut = ptx.find(".section .debug")
    body = ptx if cut < 0 else ptx[:cut]
    lines = []
    for line in body.splitlines():
        line = line.split("//", 1)[0].rstrip()
        if line and not _DEBUG_LINE.match(line):
            lines.append(line)
    return "\n".join(lines)


@contextlib.contextmanager
def as_device(facts: tf.DeviceFacts = SM90) -> Iterator[None]:
    """triton_flash answers valid() as on a CUDA device with these facts (no GPU touched)."""
    saved = tf.device_facts
    tf.device_facts = lambda device: facts  # every cuda:N is that device
    try:
        yield
    finally:
        tf.device_facts = saved


def on_gpu(problem: Problem) -> Problem:
    """The same problem on `cuda` (what valid() and the launch plan see on the GPU)."""
    fields = {f: getattr(problem, f) for f in problem.__dataclass_fields__}
    return Problem(**(fields | {"device": "cuda"}))


def configurations(
    problem: Problem, choices: dict[str, list[Any]], facts: tf.DeviceFacts = SM90
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Every combination of `choices` that valid() keeps for `problem` on that device, and the
    rejected ones grouped by valid()'s reason."""
    names = list(choices)
    kept: list[dict[str, Any]] = []
    rejected: dict[str, list[dict[str, Any]]] = {}
    gpu_problem = on_gpu(problem)
    with as_device(facts):
        for values in itertools.product(*choices.values()):
            params = dict(zip(names, values, strict=True))
            reason = tf.valid(gpu_problem, **params)
            if reason is None:
                kept.append(params)
            else:
                rejected.setdefault(reason, []).append(params)
    return kept, rejected


def _meta(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous tensor with no storage: its address (0) is 16-byte aligned, as on a GPU."""
    return torch.empty(shape, dtype=dtype, device="meta")


def launch_arguments(problem: Problem, params: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """The positional arguments and keywords of the launch build() makes for `params`
    (bhsd-contiguous inputs; the other layouts specialise alike: strides of 1 and multiples of
    16 are the same there)."""
    plan_params = {k: v for k, v in params.items() if k != "tma"}
    plan = tf.launch_plan(on_gpu(problem), **plan_params)
    b, hq, hkv = problem.batch, problem.heads_q, problem.heads_kv
    sq, skv, d = problem.seq_q, problem.seq_kv, problem.head_dim
    q, out = _meta((b, hq, sq, d), problem.dtype), _meta((b, hq, sq, d), problem.dtype)
    k, v = _meta((b, hkv, skv, d), problem.dtype), _meta((b, hkv, skv, d), problem.dtype)
    args = plan.tma_args(q, k, v, out) if params["tma"] else plan.pointer_args(q, k, v, out)
    return args, {"USE_TMA": bool(params["tma"]), **plan.consts}


class Compiler:
    """Compiles triton_flash launches for one target; one binder, reused."""

    def __init__(self, arch: int = 90) -> None:
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend

        self.target = GPUTarget("cuda", arch, 32)
        self.backend = make_backend(self.target)
        self.fn = tf.flash_fwd
        self._binder = _make_binder(self.fn, self.backend)

    def source(self, problem: Problem, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Triton's ASTSource for the launch, and the compile options (num_warps, stages)."""
        from triton.compiler import ASTSource

        args, kwargs = launch_arguments(problem, params)
        bound, specialization, options = self._binder(*args, **kwargs)
        names = [p.name for p in self.fn.params]
        signature = {name: spec[0] for name, spec in zip(names, specialization, strict=True)}
        values = list(bound.values())
        constexprs = {
            (i,): values[i] for i, spec in enumerate(specialization) if spec[0] == "constexpr"
        }
        attrs = {
            (i,): self.backend.parse_attr(spec[1])
            for i, spec in enumerate(specialization)
            if spec[0] != "constexpr" and isinstance(spec[1], str)
        }
        return ASTSource(self.fn, signature, constexprs, attrs), dict(options)

    def key(self, problem: Problem, params: dict[str, Any]) -> str:
        """What the compiler sees: two launches with one key compile to the same code."""
        src, options = self.source(problem, params)
        return f"{src.hash()}-{sorted(options.items())}"

    def compile(self, problem: Problem, params: dict[str, Any]) -> Compiled:
        """Compile one launch; CompileFailed carries the compiler's reason.

        MLIR and ptxas write their diagnostics to file descriptor 2, not to Python: they are
        caught there, kept for the reason on failure and dropped on success.
        """
        import triton

        src, options = self.source(problem, params)
        start = time.perf_counter()
        with _native_stderr() as diagnostics:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Triton 3.9's fp-fusion default notice
                    kernel = triton.compile(src, target=self.target, options=options)
            except Exception as exc:  # the compiler's own reason, whatever its type
                failure: Exception | None = exc
            else:
                failure = None
        if failure is not None:
            raise CompileFailed(_reason(failure, diagnostics.read())) from failure
        seconds = time.perf_counter() - start
        return Compiled(strip_debug(kernel.asm["ptx"]), int(kernel.metadata.shared), seconds)


class _Captured:
    def __init__(self) -> None:
        self.text = ""

    def read(self) -> str:
        return self.text


@contextlib.contextmanager
def _native_stderr() -> Iterator[_Captured]:
    """Redirect file descriptors 1 and 2 (where C++ passes and Triton's PTX dump of a ptxas
    failure print) into a temporary file."""
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")


_DIAGNOSTIC = re.compile(
    r"(Assertion .*failed|LLVM ERROR: .*|Pipeline failed while executing \[`[^`]+`|"
    r"ptxas[^\n]*(error|fatal)[^\n]*|error: (?!Failures have been detected)[^\n]*)"
)


def _reason(exc: BaseException, diagnostics: str) -> str:
    """One line: the exception, and the diagnostics that say where the compiler gave up."""
    found: list[str] = []
    for match in _DIAGNOSTIC.finditer(diagnostics):
        text = " ".join(match.group(0).split())
        text = text.replace("Pipeline failed while executing [`", "in pass ").rstrip("`")
        if text not in found:
            found.append(text)
    head = " ".join(str(exc).split()).splitlines()[0] if str(exc).strip() else ""
    line = f"{type(exc).__name__}: {head[:200]}"
    return line + (f" ({'; '.join(found)[:300]})" if found else "")


def _make_binder(fn: Any, backend: Any) -> Any:
    """Triton's launch-time binder: (bound args, specialisation per arg, options)."""
    from triton.runtime.jit import create_function_from_signature

    params = inspect.signature(create_function_from_signature).parameters
    if len(params) == 3:  # Triton >= 3.3: (signature, params, backend)
        return create_function_from_signature(fn.signature, fn.params, backend)
    raise CompileFailed(f"this Triton's binder takes {list(params)}: not supported")


# -- many compiles, in worker processes -----------------------------------------------------
# A compiler that aborts (a C++ assertion outside MLIR's crash recovery) takes its process down:
# the workers are separate processes, a dead one fails its job with that reason and is replaced.

_WORKER_COMPILER: dict[int, Compiler] = {}


def _compile_job(problem: Problem, params: dict[str, Any], arch: int) -> Compiled | str:
    compiler = _WORKER_COMPILER.get(arch)
    if compiler is None:
        compiler = _WORKER_COMPILER[arch] = Compiler(arch)
    try:
        return compiler.compile(problem, params)
    except CompileFailed as exc:
        return str(exc)


Job = tuple[Problem, dict[str, Any]]


_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _pool(size: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of `size` compiler processes kept for later calls (each costs a Triton import)."""
    pool = _POOLS.get(size)
    if pool is None:
        context = multiprocessing.get_context("spawn")
        pool = _POOLS[size] = concurrent.futures.ProcessPoolExecutor(size, mp_context=context)
    return pool


def _drop_pool(size: int) -> None:
    pool = _POOLS.pop(size, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


atexit.register(lambda: [_drop_pool(size) for size in list(_POOLS)])


def compile_many(
    jobs: list[Job],
    workers: int = 2,
    arch: int = 90,
    progress: Callable[[int, Compiled | str], None] | None = None,
) -> list[Compiled | str]:
    """Compile each (problem, params) in `workers` processes: a Compiled, or why it failed.

    When a worker dies, the jobs it took down run again in one process, in order: the first
    that fails there is the one that kills the compiler; the others are compiled again.
    """
    results: list[Compiled | str | None] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    solo = False
    while pending:
        size = 1 if solo else max(1, workers)
        pool = _pool(size)
        broken: list[int] = []
        futures = [(i, pool.submit(_compile_job, *jobs[i], arch)) for i in pending]
        for index, future in futures:
            try:
                results[index] = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                broken.append(index)
                continue
            if progress is not None:
                progress(index, results[index])
        if broken:
            _drop_pool(size)
        if broken and solo:
            results[broken[0]] = "the compiler process died (a native crash or abort)"
            if progress is not None:
                progress(broken[0], results[broken[0]])
            broken = broken[1:]
        solo = solo or bool(broken)
        pending = broken
    return [r if r is not None else "not compiled" for r in results]
