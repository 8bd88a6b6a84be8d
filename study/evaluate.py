"""`python -m study.evaluate FILE.py|DIR [variant=NAME] [params.P=V] [mutations.M=V] [overrides]`.

The judge for one candidate file (a plugin file that registers one or more variants, written by
a person or by a code-generating model): each variant it registers is built, gated and timed
against SDPA in a spawned worker, exactly as one trial of a study (the same `Worker.call
("evaluate", ...)`, gate, paired timing and verdict: COMPLETE, PRUNED with `rejected_by`, FAIL
with `error`). `variant=NAME` or `variant=[a,b]` picks some of them; without a file it judges
built-in variants. Each variant runs with its first valid parameter combination and no mutation
unless `params.<name>=` / `mutations.<name>=` say otherwise; the config overrides are
study.run's (`problem=`, `device=`, `bench=`, `seed=`, `worker.timeout_s=`, ...).

Prints one JSON object on one line: `file`, `problem`, `device`, `status` (`ok`, `rejected`,
`failed` or `unsupported`), `state` (the trial state a study records), `variant`, `spec`,
`rejected_by` and `detail`, or `error`; `latency_us`, `baseline_latency_us` (default SDPA, same
inputs, same worker, interleaved), `speedup` with `speedup_ci` ([low, high], 95%) and
`speedup_ci_from` (with the worker's interval, `speedup` is the paired speedup it is of),
`build_s`, `rel_err`, `seed` and `log` (the worker log's path). A file that registers several
variants gets `variants` (one object each); its own verdict is `ok` when
every variant is, with the fastest one's figures, else that of the first variant that is not.
A file that cannot be imported, or registers nothing, is `failed` (the candidate's fault).

This process never imports the file: which variants it registers, and their `supports` and
`valid` answers, are read in a contained child (study/registration.py), as a study reads them;
the candidate runs only in the worker, contained as in a study.

A folder: every `*.py` in it not starting with `_`, each judged in a fresh process
(`python -m study.evaluate FILE ...`), one JSON line each, in name order.

Exit status: 0 when correct and timed (a folder: every file), 1 when rejected or failed, 2 on a
usage error (no such file, a bad override). docs/evaluate.md shows the loop a code-generation
search runs around it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from kernels import PluginError
from kernels import mutations as mut
from study import cli, integrity, registration
from study.config import load
from study.errors import UserError, one_line
from study.measure.worker import Worker, evaluate_task
from study.objective import RESULT_ATTRS, call_timeout, trial_seed
from study.selfcheck import representative_params
from study.space import Candidate, unverified_reason

USAGE = (
    "usage: python -m study.evaluate FILE.py|DIR [variant=NAME] [params.P=V] [mutations.M=V] "
    "[problem=... device=... bench=... seed=N ...]"
)
KEYS = ("variant",)
PREFIXES = ("params.", "mutations.")
# the JSON's keys in this order first (the rest follow as the worker reports them)
ORDER = (
    "file",
    "status",
    "state",
    "variant",
    "rejected_by",
    "detail",
    "error",
    "latency_us",
    "baseline_latency_us",
    "speedup",
    "speedup_ci",
    "speedup_ci_from",
    "build_s",
    "log",
)
STATES = {"ok": "COMPLETE", "rejected": "PRUNED", "failed": "FAIL", "unsupported": None}
Z95 = 1.959964


def speedup_interval(result: dict[str, Any]) -> tuple[list[float] | None, str]:
    """([low, high], where it came from) for an `ok` result.

    The worker's own interval (`speedup_ci`) where it reports one; otherwise a normal
    approximation on the log scale from what every result has: each side's log latency spread
    taken as log1p(IQR / median) / 1.349 (the IQR of a normal is 1.349 sigma; log1p keeps a
    heavy upper tail from giving a negative latency), the standard error of its median as
    1.2533 * spread / sqrt(reps), and the two combined as if independent (pairing only
    narrows it, so this errs wide).
    """
    given = result.get("speedup_ci")
    if isinstance(given, dict):
        given = [given.get("low", given.get("lo")), given.get("high", given.get("hi"))]
    if isinstance(given, list | tuple) and len(given) == 2 and None not in given:
        return [float(given[0]), float(given[1])], "worker"
    try:
        reps = int(result["reps"])
        spread = 0.0
        for median, iqr in (
            (result["latency_us"], result["latency_iqr_us"]),
            (result["baseline_latency_us"], result["baseline_latency_iqr_us"]),
        ):
            sigma = math.log1p(float(iqr) / float(median)) / 1.349
            spread += (1.2533 * sigma / math.sqrt(reps)) ** 2
        speedup = float(result["speedup"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None, "none"
    half = Z95 * math.sqrt(spread)
    return [speedup * math.exp(-half), speedup * math.exp(half)], "median IQRs (log-normal approx.)"


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """A worker's result as the trial a study would record (study/objective.py's mapping)."""
    status = result.get("status")
    out: dict[str, Any] = {}
    if "build_s" in result:
        out["build_s"] = result["build_s"]
    if status == "ok":
        out["status"] = "ok"
        out.update({name: result[name] for name in RESULT_ATTRS if name in result})
        out["speedup_ci"], out["speedup_ci_from"] = speedup_interval(result)
        if out["speedup_ci_from"] == "worker" and "paired_speedup" in result:
            out["speedup"] = result["paired_speedup"]  # the point the worker's interval is of
    elif status == "rejected":
        out.update(
            status="rejected",
            rejected_by=result.get("rejected_by", "unknown"),
            detail=str(result.get("detail", ""))[:300],
        )
    else:
        out.update(
            status="failed", error=str(result.get("error") or "unknown error").splitlines()[0]
        )
    out["state"] = STATES[out["status"]]
    return out


def parse_value(text: str) -> Any:
    """`params.chunk=64` -> 64: an int, a float, true/false, null/None, else the string as
    written (`on` and `off` stay strings: mutation values, not YAML 1.1 booleans)."""
    text = text.strip().strip("'\"")
    lowered = text.lower()
    if lowered in ("null", "none"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def make_log_dir(stem: str, root: Path = Path("outputs/evaluate")) -> Path:
    now = dt.datetime.now()
    base = root / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}-{stem}"
    log_dir, n = base, 1
    while log_dir.exists():
        log_dir = base.with_name(f"{base.name}-{n}")
        n += 1
    log_dir.mkdir(parents=True)
    return log_dir


def plugin_override(path: Path) -> str:
    """`space.plugins=['PATH']`, quoted for Hydra's grammar (a path may hold `,`, `=`, spaces)."""
    quoted = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"space.plugins=['{quoted}']"


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(paths, key=value arguments): a path is an argument without `=`, or an existing one."""
    paths = [a for a in args if not a.startswith("-") and ("=" not in a or Path(a).exists())]
    return paths, [a for a in args if a not in paths]


def judge_file(path: Path | None, args: list[str]) -> dict[str, Any]:
    """Judge one file (or the built-in `variant=`): the JSON object (no exit status)."""
    own, overrides = cli.options(args, KEYS, USAGE, overrides=True, prefixes=PREFIXES)
    params = {
        k.removeprefix("params."): parse_value(v) for k, v in own.items() if k.startswith("params.")
    }
    s = cli.setup([*overrides, plugin_override(path)] if path else overrides)
    sandbox = integrity.sandbox_for(s.cfg.worker)
    try:  # a mistake in the config is the user's (exit 2); a plugin that will not import, not
        registry = registration.read(
            s.plugins, [s.problem], sandbox=sandbox, extra={k: [v] for k, v in params.items()}
        )
    except PluginError as exc:
        _, device = load(overrides)
        return {
            "file": str(path),
            "device": device,
            "status": "failed",
            "state": None,
            "error": one_line(exc),
        }
    base: dict[str, Any] = {
        "file": str(path) if path else None,
        "problem": s.problem.signature(),
        "device": s.device,
    }
    names = [n for n, v in registry.items() if path and v.plugin == str(path)]
    if "variant" in own:
        chosen = cli.as_list(own["variant"])
        wrong = [n for n in chosen if n not in registry or (names and n not in names)]
        if wrong or not chosen:
            where = f"{path} registers {', '.join(names)}" if path else "not a built-in variant"
            raise UserError(f"variant={','.join(wrong) or own['variant']}: {where}")
        names = chosen
    elif not names:
        raise UserError(f"name a candidate file or a built-in variant=NAME; {USAGE}")
    muts = {
        k.removeprefix("mutations."): parse_value(v)
        for k, v in own.items()
        if k.startswith("mutations.")
    }
    unknown = set(params) - {p for n in names for p in registry[n].params}
    if unknown:
        raise UserError(f"params.{sorted(unknown)[0]}: no judged variant has that parameter")
    for name, value in muts.items():
        try:
            mut.make(name, [value])
        except KeyError as exc:
            raise UserError(f"mutations.{name}={value}: {exc.args[0]}") from None
    seed = trial_seed(int(s.cfg.seed), 0)
    log_dir = make_log_dir(path.stem if path else names[0])
    worker = Worker(
        s.device, s.plugins, log_dir / "worker.log", s.cfg.worker.get("memory_limit_gb"), sandbox
    )
    timeout_s = float(s.cfg.worker.timeout_s)
    results = []
    try:
        for name in names:
            variant = registry[name]
            results.append(judge_variant(variant, s, params, muts, worker, seed, timeout_s))
    finally:
        worker.stop()
    base.update(seed=seed, log=str((log_dir / "worker.log").resolve()))
    return base | summarise(results)


def judge_variant(
    variant: registration.VariantInfo,
    s: cli.Setup,
    params: dict[str, Any],
    muts: dict[str, Any],
    worker: Worker,
    seed: int,
    timeout_s: float,
) -> dict[str, Any]:
    """One variant's verdict, built, gated and timed as a trial."""
    name = variant.name
    reason = variant.supports(s.problem)
    if reason:
        return {"variant": name, "status": "unsupported", "state": None, "error": reason}
    for mutation, value in muts.items():  # a choice a study leaves out before it starts
        made = mut.make(mutation, [value])
        reason = made.supports(s.problem, value) or made.applies(variant, value)
        if reason:
            return {"variant": name, "status": "unsupported", "state": None, "error": reason}
    chosen = representative_params(variant, s.problem) or {}
    chosen.update({k: v for k, v in params.items() if k in variant.params})
    candidate = Candidate(name, chosen, dict(muts))
    head = {"variant": name, "label": candidate.label(), "spec": candidate.to_dict()}
    raised = variant.valid_error(s.problem, chosen)
    if raised:  # the candidate's own valid() raised
        return head | {"status": "failed", "state": "FAIL", "error": f"valid(): {raised}"}
    # a study leaves these out too
    invalid = variant.valid(s.problem, chosen) or unverified_reason(candidate)
    if invalid:
        return head | {
            "status": "rejected",
            "state": "PRUNED",
            "rejected_by": "invalid_params",
            "detail": invalid,
        }
    task = evaluate_task(s.problem, candidate.to_dict(), s.bench, seed, f"evaluate {name}")
    limit = call_timeout(variant.tags, timeout_s, float(s.cfg.worker.build_timeout_s))
    return head | verdict(worker.call("evaluate", task, limit))


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """A file's verdict from its variants' (the module docstring says how)."""
    bad = [r for r in results if r["status"] != "ok"]
    top = dict(bad[0] if bad else min(results, key=lambda r: r["latency_us"]))
    if len(results) > 1:
        top["variants"] = results
    return top


def ordered(result: dict[str, Any]) -> dict[str, Any]:
    first = {k: result[k] for k in ORDER if k in result}
    return first | {k: v for k, v in result.items() if k not in first}


def judge_folder(folder: Path, args: list[str]) -> int:
    """One fresh `python -m study.evaluate FILE` per file; their JSON lines, in name order."""
    _, overrides = cli.options(args, KEYS, USAGE, overrides=True, prefixes=PREFIXES)
    load(overrides)  # refuse a bad override once, before any file is judged
    files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    if not files:
        raise UserError(f"{folder} holds no candidate file (*.py not starting with _)")
    worst = 0
    for file in files:
        done = subprocess.run(
            [sys.executable, "-m", "study.evaluate", str(file), *args],
            capture_output=True,
            text=True,
        )
        sys.stderr.write(done.stderr)
        lines = done.stdout.strip().splitlines()
        if done.returncode in (0, 1) and lines:
            print(lines[-1], flush=True)
        else:
            tail = done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else ""
            line = {
                "file": str(file),
                "status": "failed",
                "state": None,
                "error": f"the judge exited with {done.returncode}: {tail}",
            }
            print(json.dumps(line), flush=True)
        worst = max(worst, 1 if done.returncode else 0)
    return worst


@cli.command(USAGE, interrupted="interrupted: evaluation stopped")
def main(args: list[str]) -> int:
    paths, rest = split_args(args)
    if len(paths) > 1:
        raise UserError(f"one FILE.py or DIR at a time, got {len(paths)}; {USAGE}")
    path = Path(paths[0]).expanduser().resolve() if paths else None
    if path is not None and path.is_dir():
        return judge_folder(path, rest)
    if path is not None and not (path.is_file() and path.suffix == ".py"):
        raise UserError(f"no candidate file {paths[0]} (a .py file or a folder of them)")
    result = judge_file(path, rest)
    print(json.dumps(ordered(result), default=str), flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
