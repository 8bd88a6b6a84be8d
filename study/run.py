"""`python -m study.run [overrides]`: one study (or one per `-m` sweep combination).

config -> the variants' registration (read in a contained child: this process never imports a
plugin) and the worker on the device -> search space (what the device can run) -> storage and
study (resumed when it exists, refused when the environment differs or a record was tampered
with) -> sampler -> objective trials, each verdict sealed -> top-k re-timed, each in its own
fresh worker (study/retime.py) -> the verdict (study/results/verdict.py), first in the
terminal, report and dashboard note -> run folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial
from tqdm import tqdm

from kernels import Problem
from study import cli, integrity, registration, seal
from study.config import expand_sweeps, load, to_container
from study.errors import UserError
from study.measure.env import device_slug, differences
from study.measure.worker import Worker, evaluate_task
from study.objective import OBJECTIVE, CandidateFailed, Objective
from study.pool import PooledObjective, resolve_devices, shared_warnings, start_all
from study.results import dispatch, plots, publish, report, verdict
from study.retime import retime
from study.search import make_sampler
from study.search.callbacks import Patience
from study.space import Candidate, SearchSpace, build_space
from study.storage import join_study, open_storage, redact

log = logging.getLogger("study")
USAGE = "usage: python -m study.run [-m] [key=value ...]   (see README.md for the override names)"


class EnvironmentMismatch(UserError):
    """Resuming a study measured on another device or software stack."""


def make_run_dir(root: Path = Path("outputs/runs")) -> Path:
    now = dt.datetime.now()
    base = root / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir = base.with_name(f"{base.name}-{n}")
        n += 1
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}") from None
    return run_dir


def default_study_name(
    problem: Problem, env: dict[str, Any], space: SearchSpace, space_name: str
) -> str:
    return f"{problem.signature()}@{device_slug(env)}#{space_name}-{space.digest()}"


def open_study(cfg: Any, space: SearchSpace, env: dict[str, Any], problem: Problem) -> optuna.Study:
    storage = open_storage(str(cfg.storage.url), cfg.storage.heartbeat_s)
    name = cfg.study.name or default_study_name(problem, env, space, cfg.space.name)
    sampler = make_sampler(to_container(cfg.sampler), space, int(cfg.seed))
    attrs = {
        "env": env,
        "problem": problem.to_dict() | {"signature": problem.signature()},
        "space": {"name": cfg.space.name, "digest": space.digest(), "describe": space.describe()},
        "objective": OBJECTIVE,
    }
    # Created once, joined by every other worker (many may start at the same moment).
    study, created = join_study(storage, name, sampler, attrs)
    if not created:
        stored = study.user_attrs.get("objective")
        if stored != OBJECTIVE:
            raise EnvironmentMismatch(
                f"study '{name}' minimised another value ({stored}); its trials do not rank "
                "with this version's; pick a new study.name"
            )
        changed = differences(study.user_attrs.get("env", {}), env)
        if changed and not cfg.study.allow_env_change:
            raise EnvironmentMismatch(
                f"study '{name}' was measured in another environment ({'; '.join(changed)}); "
                "pick a new study.name, or pass study.allow_env_change=true to mix them"
            )
    return study


class Progress:
    """A tqdm bar: trials done, states, best latency and its speedup over SDPA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="trial", dynamic_ncols=True, disable=not enabled)
        self.states = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.states[trial.state.name] = self.states.get(trial.state.name, 0) + 1
        postfix = {
            "ok": self.states["COMPLETE"],
            "pruned": self.states["PRUNED"],
            "fail": self.states["FAIL"],
        }
        best = report.measured_complete(study)
        figures = verdict.measured(best[0].user_attrs) if best else None
        if best and figures:
            postfix["best_us"] = f"{best[0].value:.1f}"
            postfix["speedup"] = f"{figures[0]:.2f}x"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def sdpa_panel(
    worker: Worker,
    problem: Problem,
    bench: dict[str, Any],
    cfg: Any,
    seed: int,
    registry: dict[str, registration.VariantInfo],
) -> list[dict[str, Any]]:
    """Every SDPA backend that runs here, timed against the default dispatch, for the report."""
    names = [n for n, v in registry.items() if "sdpa" in v.tags]
    rows = []
    for name in names:
        reason = registry[name].supports(problem)
        if reason:
            rows.append({"variant": name, "status": "n/a", "reason": reason})
            continue
        task = evaluate_task(problem, Candidate(name).to_dict(), bench, seed, f"sdpa panel {name}")
        result = worker.call("evaluate", task, float(cfg.worker.timeout_s))
        result.pop("log", None)
        rows.append({"variant": name} | result)
    return rows


def run_one(overrides: list[str], show_progress: bool = True) -> int:
    s = cli.setup(overrides)
    cfg, plugins, bench = s.cfg, s.plugins, s.bench
    devices = resolve_devices(cfg.worker.devices, s.device)  # one worker per entry
    device = devices[0]
    problem = s.problem.with_device(device)
    run_dir = make_run_dir()
    store = seal.store_for(str(cfg.storage.url)).create()
    sandbox = integrity.sandbox_for(cfg.worker, str(cfg.storage.url), store, [run_dir])
    for line in shared_warnings(devices):
        print(line, file=sys.stderr)
    reading = registration.Reading(
        plugins, [problem], to_container(cfg.space).get("params"), sandbox
    )
    workers = [
        Worker(
            d,
            plugins,
            run_dir / ("worker.log" if i == 0 else f"worker-{i}.log"),
            cfg.worker.get("memory_limit_gb"),
            sandbox,
        )
        for i, d in enumerate(devices)
    ]
    worker = workers[0]
    try:
        try:
            envs = start_all(workers, 120)
        except UserError:
            reading.result()  # a plugin that cannot be imported says why, not the worker's exit
            raise
        env = envs[0]
        registry = reading.result()

        def ask_supports(names: list[str]) -> dict[str, str | None]:
            return {name: registry[name].supports(problem) for name in names}

        space = build_space(problem, to_container(cfg.space), registry, ask_supports)
        study = open_study(cfg, space, env, problem)
        key = integrity.open_key(study, store)
        print(
            f"study '{study.study_name}' on {env['device_name']} ({device}), "
            f"{len(space.variants)} variants, {len(space.candidates())} distinct candidates, "
            f"sampler {cfg.sampler.name}; storage {redact(str(cfg.storage.url))}",
            file=sys.stderr,
        )
        for name, reason in space.excluded.items():
            print(f"  left out {name}: {reason}", file=sys.stderr)
        objectives = [
            Objective(
                space,
                w,
                dataclasses.replace(problem, device=w.device),
                bench,
                int(cfg.seed),
                float(cfg.worker.timeout_s),
                extra_attrs={
                    "device_name": e["device_name"],
                    "host": e["host"],
                    "device": w.device,
                    "pid": os.getpid(),
                },
                build_timeout_s=float(cfg.worker.build_timeout_s),
                sealer=seal.Sealer(key),
            )
            for w, e in zip(workers, envs, strict=True)
        ]
        objective = objectives[0] if len(objectives) == 1 else PooledObjective(objectives)
        objective = publish.attach_logs(
            objective, run_dir, publish.artifacts_dir_for(str(cfg.storage.url))
        )
        progress = Progress(int(cfg.study.n_trials), show_progress)
        try:
            study.optimize(
                objective,
                n_trials=int(cfg.study.n_trials),
                n_jobs=len(workers),
                timeout=cfg.study.timeout_s,
                catch=(CandidateFailed,),
                callbacks=[progress]
                + ([Patience(int(cfg.study.patience))] if cfg.study.patience else []),
            )
        finally:
            progress.close()
        panel = sdpa_panel(worker, problem, bench, cfg, int(cfg.seed), registry)
    finally:
        for w in workers:
            w.stop()

    findings = seal.check(study, store)  # a record rewritten while the study ran
    rows = [
        r for r in report.top_k(study, int(cfg.study.top_k)) if r["trial"] not in findings.tampered
    ]
    again = retime(
        rows[: int(cfg.study.retime_top_k)],
        problem,
        bench,
        run_dir,
        int(cfg.seed),
        plugins,
        int(cfg.study.retime_rounds),
        float(cfg.worker.timeout_s),
        cfg.worker.get("memory_limit_gb"),
        float(cfg.worker.build_timeout_s),
        sandbox,
        registry,
    )
    answer = verdict.decide(rows[: int(cfg.study.retime_top_k)] or rows[:1], again).to_dict()
    ranking = report.ranking_verdict(rows, again)
    notes = report.flags(rows) + findings.lines()
    state_counts = report.counts(study)
    print(answer["sentence"])
    print(report.table(rows, again))
    print(ranking)
    for note in notes:
        print("FLAG:", note)
    results = {
        "study": study.study_name,
        "storage": redact(str(cfg.storage.url)),
        "env": env,
        "problem": problem.to_dict() | {"signature": problem.signature()},
        "states": state_counts,
        "top_k": rows,
        "retimed": again,
        "verdict": answer,
        "ranking": ranking,
        "sdpa_backends": panel,
        "flags": notes,
        "space": space.describe(),
        "trials_this_run": int(cfg.study.n_trials),
        "overrides": overrides,
    }
    default_pick = dispatch.sdpa_default_pick(problem)
    figures = plots.write_plots(study, run_dir)
    results["sdpa_default"] = default_pick
    results["figures"] = figures
    results["plugins"] = plugins
    markdown = report.markdown_report(
        study.study_name,
        problem,
        env,
        state_counts,
        rows,
        again,
        panel,
        space.describe(),
        notes,
        overrides,
        ranking,
        default_pick=default_pick,
        figures=figures,
        trials_this_run=int(cfg.study.n_trials),
        verdict=answer,
    )
    report.write_run_folder(run_dir, results, markdown, OmegaConf.to_yaml(cfg))
    note = report.note_markdown(
        study.study_name, env, state_counts, rows, again, ranking, run_dir, default_pick, answer
    )
    publish.publish(study, note, plugins, again, answer)
    print(f"run folder: {run_dir}")
    return 0


@cli.command(
    USAGE,
    interrupted="interrupted: finished trials are saved; rerun to resume",
    flags=("-m", "--multirun"),
)
def main(args: list[str]) -> int:
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    combos = expand_sweeps(overrides) if multirun else [overrides]
    for combo in combos:
        cfg, device = load(combo)  # every combination is checked before any study starts
        resolve_devices(cfg.worker.devices, device)
    for index, combo in enumerate(combos):
        if multirun:
            print(f"[{index + 1}/{len(combos)}] {' '.join(combo)}", file=sys.stderr)
        run_one(combo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
