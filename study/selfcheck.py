"""`python -m study.selfcheck [device=... problem=... bench=... space.variants=[a,b]]`.

The first thing to run on a new machine: every registered variant is built, checked and timed in
a spawned worker with a representative configuration (its first valid parameter combination),
once with no mutation and once per other applicable value of each mutation (one mutation varied
at a time). On a GPU, also once per other value of each tunable (`tma=True`, `warp_specialize=
True`, the cache hints, the compile modes, flex's tiles: the switches that change the code that
runs; the other tunables stay as close to the representative as `valid` allows), and once per
combination the study leaves out as never verified (study.space.UNVERIFIED, e.g. graph=on with
l2=kv): those rows are reported, not scored, so that a GPU run shows whether they work.
Prints a table: variant, row, status, latency, TFLOP/s, and the speedup over the
fastest SDPA backend of this run. That speedup comes from paired measurements: each row's ratio
against default SDPA timed in the same trial, divided by the best such ratio of an SDPA backend
(so drift between rows cancels).

Exit status: 0 when every built-in variant is correct and runs wherever it claims support;
1 when one is PRUNED (incorrect) or FAILs; 2 for a configuration mistake. A variant that says it
cannot run the problem (`supports`) is listed as n/a with its reason, not a failure. Defaults:
the device's default problem and `bench=quick`. On the CPU the Triton variants run under the
interpreter (correct, slow: their rows use a small problem; the timing is not a CPU speed).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kernels
from kernels import Problem
from kernels import mutations as mut
from study import cli, integrity, registration
from study.errors import UserError
from study.measure.worker import Worker, evaluate_task
from study.objective import call_timeout
from study.space import UNVERIFIED, Candidate, Unverified, VariantLike

USAGE = (
    "usage: python -m study.selfcheck [device=... problem=... bench=... space.variants=[a,b] "
    "space.exclude=[a,b] space.plugins=[file.py]]"
)
# The Triton interpreter is correct but slow: on the CPU its rows use at most this shape.
INTERPRETED_LIMITS = {"batch": 1, "heads_q": 2, "seq_q": 64, "seq_kv": 64}


@dataclasses.dataclass
class Row:
    variant: str
    mutation: str
    status: str
    detail: str = ""
    latency_us: float | None = None
    tflops: float | None = None
    speedup_default: float | None = None  # vs default SDPA, same trial
    vs_fastest: float | None = None
    builtin: bool = True
    problem: str = ""
    scored: bool = True  # False: an unverified combination, reported only

    @property
    def failed(self) -> bool:
        bad = self.status.startswith("PRUNED") or self.status == "FAIL"
        return self.builtin and self.scored and bad


@dataclasses.dataclass(frozen=True)
class Planned:
    """One row to run: its label, the variant's params and the mutations."""

    label: str
    params: dict[str, Any]
    mutations: dict[str, Any]
    scored: bool = True
    stage: int = 0  # 0: representative and mutations, 1: a tunable, 2: unverified


def _is_valid(variant: VariantLike, problem: Problem, params: dict[str, Any]) -> bool:
    try:
        return variant.valid(problem, params) is None
    except Exception:  # a valid() that cannot answer here (no GPU to ask) rules nothing in
        return False


def representative_params(variant: VariantLike, problem: Problem) -> dict[str, Any] | None:
    """The first valid combination in the order of the choices (None: there is none)."""
    names = list(variant.params)
    for values in itertools.product(*(variant.params[n] for n in names)):
        params = dict(zip(names, values, strict=True))
        if _is_valid(variant, problem, params):
            return params
    return None if names else {}


def nearest_valid(
    variant: VariantLike, problem: Problem, base: dict[str, Any], fixed: dict[str, Any]
) -> dict[str, Any] | None:
    """A valid combination with `fixed` set and as few other tunables changed from `base` as
    possible (then the first in the order of the choices); None where there is none."""
    others = [n for n in variant.params if n not in fixed]
    start = {**base, **fixed}
    for distance in range(len(others) + 1):
        for names in itertools.combinations(others, distance):
            alternatives = [[c for c in variant.params[n] if c != base[n]] for n in names]
            for values in itertools.product(*alternatives):
                params = {**start, **dict(zip(names, values, strict=True))}
                if _is_valid(variant, problem, params):
                    return params
    return None


def tunable_rows(variant: VariantLike, problem: Problem, base: dict[str, Any]) -> list[Planned]:
    """One row per other value of each tunable ("name=value"), the rest nearest to `base`."""
    rows = []
    for name, choices in variant.params.items():
        for value in choices:
            if value == base[name]:
                continue
            params = nearest_valid(variant, problem, base, {name: value})
            if params is not None:
                rows.append(Planned(f"{name}={value}", params, {}, stage=1))
    return rows


def _offers(rule: Unverified, variant: VariantLike, problem: Problem) -> bool:
    if any(value not in variant.params.get(n, []) for n, value in rule.params.items()):
        return False
    for name, value in rule.mutations.items():
        mutation = mut.make(name, [value])
        if mutation.supports(problem, value) or mutation.applies(variant, value):
            return False
    return True


def unverified_rows(variant: VariantLike, problem: Problem, base: dict[str, Any]) -> list[Planned]:
    """One unscored row per UNVERIFIED combination this variant can be run with here."""
    rows = []
    for rule in UNVERIFIED:
        if not _offers(rule, variant, problem):
            continue
        params = nearest_valid(variant, problem, base, rule.params)
        if params is not None:
            label = f"unverified: {rule.label()}"
            rows.append(Planned(label, params, dict(rule.mutations), scored=False, stage=2))
    return rows


def plan(variant: VariantLike, problem: Problem) -> list[Planned] | None:
    """The rows selfcheck runs for `variant` on `problem` (None: no valid combination): the
    representative, each mutation value, and on a GPU each tunable value and each unverified
    combination (on the CPU the GPU switches do not apply and the Triton interpreter ignores
    warps, stages and hints: the representative rows keep the CPU run short)."""
    base = representative_params(variant, problem)
    if base is None:
        return None
    rows = [Planned(label, base, muts) for label, muts in mutation_rows(variant, problem)]
    if problem.is_cuda:
        rows += tunable_rows(variant, problem, base)
        rows += unverified_rows(variant, problem, base)
    return rows


def mutation_rows(variant: VariantLike, problem: Problem) -> list[tuple[str, dict[str, Any]]]:
    """("label", mutations) per row: none, then each other applicable value one at a time."""
    rows: list[tuple[str, dict[str, Any]]] = [("-", {})]
    for name, choices in mut.ALL_CHOICES.items():
        mutation = mut.make(name, list(choices))
        for value in choices:
            if value == mut.default_value(name):
                continue
            if mutation.supports(problem, value) or mutation.applies(variant, value):
                continue
            rows.append((f"{name}={value}", {name: value}))
    return rows


def _shrunk(problem: Problem) -> Problem:
    """The problem cut down to INTERPRETED_LIMITS (GQA grouping kept where it fits)."""
    group = problem.heads_q // problem.heads_kv
    heads_q = min(problem.heads_q, max(INTERPRETED_LIMITS["heads_q"], group))
    return dataclasses.replace(
        problem,
        batch=min(problem.batch, INTERPRETED_LIMITS["batch"]),
        heads_q=heads_q,
        heads_kv=max(1, heads_q // group),
        seq_q=min(problem.seq_q, INTERPRETED_LIMITS["seq_q"]),
        seq_kv=min(problem.seq_kv, INTERPRETED_LIMITS["seq_kv"]),
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    head = ["variant", "row", "status", "latency us", "TFLOP/s", "vs fastest SDPA"]
    body = [
        [
            r.variant,
            r.mutation,
            r.status,
            _fmt(r.latency_us, ".1f"),
            _fmt(r.tflops, ".4g"),
            "-" if r.vs_fastest is None else f"{r.vs_fastest:.3f}x",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r, cells in zip(rows, body, strict=True):
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        notes = [n for n in (r.problem, r.detail) if n]
        lines.append(line + (f"   ({'; '.join(notes)})" if notes else ""))
    return "\n".join(lines)


def _run_row(
    worker: Worker,
    problem: Problem,
    here: Problem,
    variant: VariantLike,
    item: Planned,
    bench: dict[str, Any],
    seed: int,
    timeout_s: float,
) -> Row:
    """Evaluate one planned row in the worker."""
    task = evaluate_task(
        here,
        Candidate(variant.name, item.params, item.mutations).to_dict(),
        bench,
        seed,
        f"selfcheck {variant.name} {item.label}",
    )
    result = worker.call("evaluate", task, timeout_s)
    builtin = variant.source.startswith("kernels.")
    row = Row(variant.name, item.label, "FAIL", builtin=builtin, scored=item.scored)
    if here != problem:
        row.problem = f"interpreted: {here.signature()}"
    if not item.scored:
        row.problem = "not scored: left out of studies until verified"
    if item.params:
        row.detail = ", ".join(f"{k}={v}" for k, v in item.params.items())
    status = result.get("status")
    if status == "ok":
        row.status = "ok"
        row.latency_us = result["latency_us"]
        row.tflops = result["tflops"]
        row.speedup_default = result.get("paired_speedup") or result["speedup"]
    elif status == "rejected":
        row.status = f"PRUNED({result.get('rejected_by')})"
        row.detail = str(result.get("detail", ""))[:160]
    else:
        row.detail = str(result.get("error", ""))[:160]
    return row


def check(
    problem: Problem,
    bench: dict[str, Any],
    names: list[str],
    worker: Worker,
    seed: int = 0,
    timeout_s: float = 300.0,
    echo: bool = True,
    build_timeout_s: float = 0.0,
    registry: Mapping[str, VariantLike] | None = None,
) -> list[Row]:
    """Every planned row of every variant; the table lists them by variant. They run stage by
    stage (the representative and mutation rows of every variant, then the tunables, then the
    unverified combinations), so that a run cut short has checked every variant once.
    `registry`: as study/registration.py reads it, answered for `problem` and its shrunk copy
    (the Triton variants on the CPU; main passes it); None: this process's own registry (the
    built-ins, unless the caller imported more) with the worker's `supports` answers."""
    if registry is None:
        registry = kernels.variants()
        ask = {"problem": problem.to_dict(), "names": names}
        reply = worker.call("supports", ask, timeout_s)
        if reply.get("status") != "ok":
            raise RuntimeError(f"asking the worker which variants run failed: {reply.get('error')}")
        answers = reply["answers"]
    else:
        answers = {name: registry[name].supports(problem) for name in names}
    done: list[tuple[tuple[int, int, int], Row]] = []
    work: list[tuple[tuple[int, int, int], VariantLike, Problem, Planned]] = []
    for order, name in enumerate(names):
        variant = registry[name]
        builtin = variant.source.startswith("kernels.")
        reason = answers.get(name)
        if reason:
            done.append(((order, 0, 0), Row(name, "-", "n/a", reason, builtin=builtin)))
            continue
        here = problem
        if "triton" in variant.tags and not problem.is_cuda:
            here = _shrunk(problem)
        planned = plan(variant, here)
        if planned is None:
            row = Row(name, "-", "n/a", "no valid parameter combination", builtin=builtin)
            done.append(((order, 0, 0), row))
            continue
        work += [((order, item.stage, i), variant, here, item) for i, item in enumerate(planned)]
    for key, variant, here, item in sorted(work, key=lambda w: (w[0][1], w[0][0], w[0][2])):
        timeout = call_timeout(variant.tags, timeout_s, build_timeout_s)
        row = _run_row(worker, problem, here, variant, item, bench, seed, timeout)
        done.append((key, row))
        if echo:
            print(
                f"  {variant.name} {item.label}: {row.status} {_fmt(row.latency_us, '.1f')} us",
                file=sys.stderr,
                flush=True,
            )
    rows = [row for _, row in sorted(done, key=lambda d: d[0])]
    sdpa = [
        r.speedup_default
        for r in rows
        if r.mutation == "-"
        and r.speedup_default
        and "sdpa" in registry[r.variant].tags
        and not r.problem
    ]
    best = max(sdpa) if sdpa else None
    for r in rows:
        if r.speedup_default and best and not r.problem:
            r.vs_fastest = r.speedup_default / best
    return rows


@cli.command(USAGE, interrupted="interrupted: selfcheck stopped before its table", quiet=True)
def main(args: list[str]) -> int:
    keys = [a.split("=", 1)[0].lstrip("+") for a in args]
    overrides = list(args) if "bench" in keys else ["bench=quick", *args]
    s = cli.setup(overrides)
    sandbox = integrity.sandbox_for(s.cfg.worker)
    registry = registration.read(s.plugins, [s.problem, _shrunk(s.problem)], sandbox=sandbox)
    names = list(s.cfg.space.variants) or sorted(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}")
    if "space.exclude" in keys:
        names = [n for n in names if n not in set(s.cfg.space.exclude)]
    print(
        f"selfcheck on {s.device}: {s.problem.signature()}, {len(names)} variants "
        f"({' '.join(overrides)})",
        file=sys.stderr,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="selfcheck-"))
    worker = Worker(s.device, s.plugins, log_dir / "worker.log", sandbox=sandbox)
    try:
        rows = check(
            s.problem,
            s.bench,
            names,
            worker,
            seed=int(s.cfg.seed),
            timeout_s=max(float(s.cfg.worker.timeout_s), 300.0),
            build_timeout_s=float(s.cfg.worker.build_timeout_s),
            registry=registry,
        )
    finally:
        worker.stop()
    print(table(rows))
    failed = [r for r in rows if r.failed]
    if failed:
        print(
            f"selfcheck FAILED: {len(failed)} built-in row(s) incorrect or failing: "
            + ", ".join(f"{r.variant} {r.mutation} {r.status}" for r in failed),
        )
        print(f"worker log: {log_dir / 'worker.log'}")
        return 1
    print(f"selfcheck passed: {len(rows)} rows; worker log: {log_dir / 'worker.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
