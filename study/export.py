"""`python -m study.export [study.name=A[,B...]] [storage.url=...] out=PATH.json`: the tuning table.

One entry per problem signature and device model, as the study's verdict says
(study/results/verdict.py, stored by the last run): a confirmed winner's trial (its effective
spec, its measured figures, its re-timing with the interval, the environment), or, where the
verdict is to keep SDPA, an entry that says so (`verdict: keep_sdpa`, with the reason): never a
candidate slower than the baseline measured beside it. A study without a verdict (its run
stopped before the re-timing) exports nothing, with a one-line reason. All studies in the
storage by default, or the named ones (`study.name=a,b` or `study.name=[a,b]`). An existing
`out` file is merged into: entries of other signatures or other devices are kept; for the same
signature on the same device model the entry with the larger confirmed speedup is kept (a
winner's re-timed lower bound; 1 for keep-SDPA; an entry without an interval, from an older
export, loses to any), a tie keeps the newer. Read it back with `kernels.tuned.load(PATH)`; the
format is described there.

A study whose records fail their verdict digests (study/seal.py: rewritten after they were
judged) is refused: nothing of it is exported, the line says why, and the exit status is 1.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

import optuna

from kernels.tuned import FORMAT, VERSION
from study import cli, registration, seal
from study.errors import UserError
from study.measure.env import device_slug
from study.results.report import measured_complete
from study.results.verdict import WINNER
from study.storage import DEFAULT_STORAGE, open_storage

KEYS = ("study.name", "storage.url", "out")
USAGE = "usage: python -m study.export [study.name=A[,B]] [storage.url=URL] out=PATH.json"
RESULT_KEYS = (
    "value_us",
    "latency_us",
    "latency_iqr_us",
    "baseline_latency_us",
    "speedup",
    "paired_speedup",
    "speedup_ci",
    "timing",
    "b2b_speedup",
    "b2b_speedup_ci",
    "tflops",
    "rel_err",
)
SDPA_SPEC = {"variant": "sdpa", "params": {}, "mutations": {}}


class ExportError(UserError):
    """The table cannot be written as asked (one line for the user)."""


def registered_names(path: str | Path) -> set[str]:
    """Variant names a plugin file registers with a literal `register("name", ...)` call."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        first = node.args[0]
        if called == "register" and isinstance(first, ast.Constant):
            names.add(str(first.value))
    return names


def _plugin_for(variant: str, plugins: list[str]) -> str | None:
    """The plugin file (of those the study used) that registers `variant`; None if built in.

    Read from the files' source first: this process's registry may hold another plugin's
    variant of the same name (two studies, two plugin files, one name). A variant registered in
    a way the scan cannot see (a loop, a helper) is looked up in the registration read in a
    child process (study/registration.py): this process imports no plugin.
    """
    import kernels

    for path in plugins:
        if variant in registered_names(path):
            return str(Path(path).resolve())
    registry = kernels.variants()  # the built-ins only
    if variant in registry and registry[variant].source.startswith("kernels."):
        return None
    for path in plugins:
        try:
            info = registration.read([path]).get(variant)
        except kernels.PluginError:
            continue
        if info is not None and info.plugin is not None:
            return str(Path(path).resolve())
    raise ExportError(
        f"variant {variant} is neither built in nor found in the study's plugins {plugins}: "
        "cannot record where to import it from"
    )


def entry_of(study: optuna.Study) -> tuple[dict[str, Any] | None, str]:
    """The table entry of one study as its verdict says, or None and why there is none."""
    verdict = study.user_attrs.get("verdict")
    env = dict(study.user_attrs.get("env", {}))
    problem = dict(study.user_attrs.get("problem", {}))
    if not problem:
        return None, "no problem recorded with the study, nothing exported"
    if not verdict:
        return None, (
            "no verdict (its run stopped before the re-timing, or predates verdicts), nothing "
            "exported; `python -m study.run` on it again re-times and judges"
        )
    device = str(env.get("device", problem.get("device", "cpu")))
    entry: dict[str, Any] = {
        "signature": problem.get("signature"),
        "device": device_slug(env),
        "device_type": "cuda" if device.startswith("cuda") else "cpu",
        "device_name": env.get("device_name"),
        "problem": {k: v for k, v in problem.items() if k != "signature"},
        "study": study.study_name,
        "trials_in_study": len(study.get_trials(deepcopy=False)),
        "env": env,
        "verdict": verdict["kind"],
        "reason": verdict["sentence"],
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if verdict["kind"] != WINNER:
        entry.update(variant="sdpa", label="sdpa", spec=dict(SDPA_SPEC), plugin=None)
        entry["best_alternative"] = {
            k: verdict.get(k) for k in ("trial", "candidate", "retimed_speedup", "retimed_ci")
        }
        return entry, ""
    trial = next((t for t in measured_complete(study) if t.number == verdict["trial"]), None)
    if trial is None or not trial.user_attrs.get("spec"):
        return None, f"the verdict's trial {verdict['trial']} is not a measured trial here"
    attrs = trial.user_attrs
    spec = attrs["spec"]
    entry.update(
        variant=spec["variant"],
        label=attrs.get("label", spec["variant"]),
        spec=spec,
        plugin=_plugin_for(spec["variant"], list(study.user_attrs.get("plugins", []))),
        trial=trial.number,
    )
    entry.update({k: attrs.get(k) for k in RESULT_KEYS})
    retimed = study.user_attrs.get("retimed", {}).get(str(trial.number))
    if retimed:
        entry["retimed"] = retimed
    entry["retimed_interval"] = verdict["retimed_ci"]
    return entry, ""


def merit(entry: dict[str, Any]) -> float:
    """How much faster than SDPA an entry is, for sure: a winner's re-timed lower bound, 1 for
    keep-SDPA, -inf for an entry without an interval (an older export)."""
    if entry.get("verdict") == "keep_sdpa":
        return 1.0
    interval = entry.get("retimed_interval")
    if interval and interval[0] is not None and math.isfinite(interval[0]):
        return float(interval[0])
    return -math.inf


def merge(table: dict[str, Any], entry: dict[str, Any]) -> str:
    """Put `entry` into `table`; returns what happened (added, replaced, kept)."""
    per_device = table["entries"].setdefault(entry["signature"], {})
    old = per_device.get(entry["device"])
    if old is None:
        per_device[entry["device"]] = entry
        return "added"
    if merit(entry) >= merit(old):
        per_device[entry["device"]] = entry
        return "replaced"
    return (
        f"kept the entry from {old.get('study')} ({old.get('label')}, confirmed "
        f"{merit(old):.2f}x SDPA at least)"
    )


def read_table(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": FORMAT, "version": VERSION, "entries": {}}
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not JSON ({exc}); pick another out=") from None
    if table.get("format") != FORMAT:
        raise ExportError(f"{path} is not a kernel-study tuning table; pick another out=")
    table.setdefault("entries", {})
    return table


def export(storage_url: str, names: list[str] | None, out: Path) -> list[str]:
    """Write/merge the table; returns one line per study (`refused: ...` for a tampered one)."""
    storage = open_storage(storage_url)
    available = [s.study_name for s in optuna.get_all_study_summaries(storage, False)]
    chosen = names or available
    missing = [n for n in chosen if n not in available]
    if missing:
        raise ExportError(f"no study named {', '.join(missing)} in {storage_url}")
    if not chosen:
        raise ExportError(f"no study in {storage_url}")
    table = read_table(out)
    store = seal.store_for(storage_url)
    lines = []
    for name in chosen:
        study = optuna.load_study(study_name=name, storage=storage)
        found = seal.check(study, store)
        if found.tampered:
            lines.append(f"{name}: refused: {found.lines()[0]}")
            continue
        lines += [f"{name}: warning: {line}" for line in found.lines()]
        entry, why = entry_of(study)
        if entry is None:
            lines.append(f"{name}: {why}")
            continue
        what = merge(table, entry)
        lines.append(f"{entry['signature']} on {entry['device']}: {entry['reason']} [{what}]")
    table["format"], table["version"] = FORMAT, VERSION
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(out)
    return lines


@cli.command(USAGE)
def main(args: list[str]) -> int:
    opts, _ = cli.options(args, KEYS, USAGE)
    if not opts.get("out"):
        raise ExportError(f"out=PATH.json is required; {USAGE}")
    url = opts.get("storage.url", DEFAULT_STORAGE)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise ExportError(f"no study database at {url.removeprefix('sqlite:///')}")
    names = cli.as_list(opts["study.name"]) if opts.get("study.name") else None
    lines = export(url, names, Path(opts["out"]))
    for line in lines:
        print(line)
    print(f"tuning table: {opts['out']}")
    return 1 if any(": refused: " in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
