"""Trials per minute against the number of workers, per storage (SQLite, journal, PostgreSQL).

    .venv/bin/python bench/scaling.py [--workers 1,2,4,8] [--storages sqlite,journal,postgres]
        [--latency 0.5] [--duration 30] [--sampler random] [--out bench/results/scaling.md]

Each worker is a separate process (as on separate machines) that opens the storage with the
tool's own `open_storage` (heartbeat on), joins one study with `join_study`, and runs the tool's
own `Objective` over a real flat search space; only the measurement is simulated: the worker
sleeps `--latency` seconds per trial (a fixed-latency stand-in for build + gate + timing) and
returns a latency from a fixed landscape. So the figures measure the tool's coordination cost
(sampler, storage round trips, duplicate lookup, heartbeats), not the CPU: on a 2-core machine
8 sleeping workers do not compete for cores. PostgreSQL is a throwaway local server
(tests/pg.py) with its durable defaults (fsync on); SQLite as `open_storage` opens it (WAL).
Workers start together after all have imported torch; trials are counted in a
fixed window, and only measured trials (not copies of an earlier identical candidate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAKE_PLUGIN = """
from kernels import register

@register("bench_fake", params={"a": list(range(32)), "b": list(range(32))})
def build(problem, a, b):
    raise RuntimeError("never built: bench/scaling.py simulates the measurement")
"""


class SleepWorker:
    """Stands in for study.measure.worker.Worker: sleeps `latency_s`, returns a fixed result."""

    def __init__(self, device: str, latency_s: float) -> None:
        self.device = device
        self.latency_s = latency_s

    def call(self, kind: str, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        time.sleep(self.latency_s)
        key = json.dumps(payload.get("candidate"), sort_keys=True).encode()
        noise = int(hashlib.sha1(key).hexdigest()[:8], 16) / 0xFFFFFFFF
        latency = 50.0 + 100.0 * noise
        return {
            "status": "ok",
            "latency_us": latency,
            "latency_iqr_us": latency * 0.02,
            "baseline_latency_us": 100.0,
            "speedup": 100.0 / latency,
            "paired_speedup": 100.0 / latency,  # the value's figures (study/objective.py)
            "speedup_ci": [100.0 / latency, 100.0 / latency],
            "baseline_latency_min_us": 100.0,
            "timing": "per_call",
            "tflops": 1.0,
            "rel_err": 1e-4,
            "build_s": 0.0,
            "wall_s": self.latency_s,
        }


def child(args: argparse.Namespace) -> None:
    """One worker: open, join, wait for the start signal, run trials until the window closes."""
    import warnings

    import optuna

    import kernels
    from study.config import load, problem_from, to_container
    from study.objective import CandidateFailed, Objective
    from study.search import make_sampler
    from study.space import build_space
    from study.storage import join_study, open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    plugin = Path(args.dir) / "bench_fake.py"
    kernels.load_plugin(str(plugin))
    cfg, device = load(
        [
            "device=cpu",
            "problem=small_cpu",
            "space.variants=[bench_fake]",
            f"sampler={args.sampler}",
        ]
    )
    problem = problem_from(cfg, device)
    registry = kernels.variants()
    space = build_space(
        problem,
        to_container(cfg.space),
        registry,
        lambda names: {n: registry[n].supports(problem) for n in names},
    )
    storage = open_storage(args.url, args.heartbeat_s)
    sampler = make_sampler(to_container(cfg.sampler), space, args.seed)
    study, _ = join_study(storage, "scaling", sampler, {"env": {"bench": "scaling"}})
    objective = Objective(
        space,
        SleepWorker(device, args.latency),  # type: ignore[arg-type]
        problem,
        to_container(cfg.bench),
        args.seed,
        60.0,
        extra_attrs={"pid": os.getpid(), "host": platform.node()},
    )
    # One trial before the window: the sampler enumerates the space once per process.
    study.optimize(objective, n_trials=1, catch=(CandidateFailed,))
    Path(args.dir, f"ready-{args.seed}").write_text("1")
    go = Path(args.dir) / "go"
    while not go.exists():
        time.sleep(0.05)
    start, end = (float(x) for x in go.read_text().split())
    time.sleep(max(0.0, start - time.time()))
    study.optimize(objective, timeout=end - time.time(), catch=(CandidateFailed,))


def run_config(url: str, workdir: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    from study.storage import open_storage

    for stale in workdir.glob("ready-*"):
        stale.unlink()
    (workdir / "go").unlink(missing_ok=True)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                f"--url={url}",
                f"--dir={workdir}",
                f"--seed={i}",
                f"--latency={args.latency}",
                f"--sampler={args.sampler}",
                f"--heartbeat-s={args.heartbeat_s}",
            ],
            cwd=workdir,
        )
        for i in range(n)
    ]
    deadline = time.time() + 300
    while len(list(workdir.glob("ready-*"))) < n:
        if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"workers did not start for {url} x{n}")
        time.sleep(0.1)
    start = time.time() + 1.0
    end = start + args.duration
    (workdir / "go.tmp").write_text(f"{start} {end}")
    (workdir / "go.tmp").rename(workdir / "go")
    for p in procs:
        p.wait(timeout=args.duration + 300)
    study = optuna.load_study(study_name="scaling", storage=open_storage(url))
    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.datetime_complete is not None and start <= t.datetime_complete.timestamp() <= end
    ]
    measured = [t for t in done if t.user_attrs.get("measured")]
    return {"trials": len(done), "measured": len(measured)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--storages", default="sqlite,journal,postgres")
    parser.add_argument("--latency", type=float, default=0.5, help="simulated seconds per trial")
    parser.add_argument("--duration", type=float, default=30.0, help="window per config, s")
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--heartbeat-s", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scaling.md"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from tests.pg import PgUnavailable, local_server

    counts = [int(x) for x in args.workers.split(",")]
    storages = args.storages.split(",")
    ideal = 60.0 / args.latency
    rows: list[tuple[str, int, float, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="kernel-study-scaling-") as tmp:
        server_cm = None
        server = None
        if "postgres" in storages:
            try:
                server_cm = local_server(durable=True)
                server = server_cm.__enter__()
            except PgUnavailable as exc:
                print(f"postgres skipped: {exc}", file=sys.stderr)
        try:
            for storage in storages:
                base_tpm = None
                for n in counts:
                    workdir = Path(tmp) / f"{storage}-{n}"
                    workdir.mkdir()
                    (workdir / "bench_fake.py").write_text(FAKE_PLUGIN)
                    if storage == "sqlite":
                        url = f"sqlite:///{workdir / 'studies.db'}"
                    elif storage == "journal":
                        url = f"journal:///{workdir / 'studies.journal'}"
                    elif storage == "postgres" and server is not None:
                        url = server.create_db("scaling")
                    else:
                        continue
                    got = run_config(url, workdir, n, args)
                    tpm = got["measured"] * 60.0 / args.duration
                    base_tpm = base_tpm or tpm
                    eff = tpm / (n * base_tpm) if base_tpm else 0.0
                    rows.append((storage, n, tpm, eff, got["trials"] - got["measured"]))
                    print(
                        f"{storage:9s} workers={n}: {tpm:7.1f} trials/min "
                        f"(ideal {n * ideal:.0f}), efficiency {eff:.0%}",
                        flush=True,
                    )
        finally:
            if server_cm is not None:
                server_cm.__exit__(None, None, None)

    table = [
        "| storage | workers | trials/min | ideal | of ideal | scaling efficiency vs 1 worker |",
        "|---|---|---|---|---|---|",
    ]
    for storage, n, tpm, eff, _ in rows:
        table.append(
            f"| {storage} | {n} | {tpm:.1f} | {n * ideal:.0f} | {tpm / (n * ideal):.0%} | "
            f"{eff:.0%} |"
        )
    dups = sum(r[4] for r in rows)
    header = (
        f"## {dt.datetime.now():%Y-%m-%d %H:%M} on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}, load average at the end "
        f"{os.getloadavg()[0]:.1f})\n\n"
        f"Sleep objective: {args.latency:g} s per trial (simulated measurement), sampler "
        f"{args.sampler}, heartbeat {args.heartbeat_s} s, {args.duration:g} s window per row; "
        f"each worker a separate process; only measured trials counted ({dups} copies of "
        "earlier candidates left out).\n"
    )
    text = header + "\n" + "\n".join(table) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        if out.stat().st_size == 0:
            fh.write(
                "# Scaling: trials per minute against workers\n\n"
                "Appended by `bench/scaling.py` (see its docstring for the method).\n\n"
            )
        fh.write(text + "\n")


if __name__ == "__main__":
    main()
