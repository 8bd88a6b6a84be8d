"""`python -m study.export [study.name=A[,B...]] [storage.url=...] out=PATH.json`: the tuning table.

One entry per problem signature and device model: the study's best measured COMPLETE trial
(its effective spec, its measured figures, the re-timing of the last run where there was one,
the environment). All studies in the storage by default, or the named ones (`study.name=a,b` or
`study.name=[a,b]`). An existing `out` file is merged into: entries of other signatures or
other devices are kept; for the same signature on the same device model the faster measured
entry is kept (the other is dropped; a tie keeps the newer). Read it back with
`kernels.tuned.load(PATH)`; the format is described there.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import optuna

from kernels.tuned import FORMAT, VERSION
from study import cli
from study.errors import UserError
from study.measure.env import device_slug
from study.results.report import measured_complete
from study.storage import DEFAULT_STORAGE, open_storage

KEYS = ("study.name", "storage.url", "out")
USAGE = "usage: python -m study.export [study.name=A[,B]] [storage.url=URL] out=PATH.json"
RESULT_KEYS = (
    "latency_us",
    "latency_iqr_us",
    "baseline_latency_us",
    "speedup",
    "tflops",
    "rel_err",
)


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
    variant of the same name (two studies, two plugin files, one name).
    """
    import kernels

    for path in plugins:
        if variant in registered_names(path):
            return str(Path(path).resolve())
    registry = kernels.variants()
    if variant in registry and registry[variant].source.startswith("kernels."):
        return None
    for path in plugins:  # registered in a way the source scan cannot see (a loop, a helper)
        try:
            if variant in kernels.load_plugin(path):
                return str(Path(path).resolve())
        except kernels.PluginError:
            continue
    raise ExportError(
        f"variant {variant} is neither built in nor found in the study's plugins {plugins}: "
        "cannot record where to import it from"
    )


def entry_of(study: optuna.Study) -> dict[str, Any] | None:
    """The table entry of one study (its best measured trial), or None where it has none."""
    best = measured_complete(study)
    if not best:
        return None
    trial = best[0]
    attrs = trial.user_attrs
    env = dict(study.user_attrs.get("env", {}))
    problem = dict(study.user_attrs.get("problem", {}))
    if not problem or not attrs.get("spec"):
        return None
    spec = attrs["spec"]
    device = str(env.get("device", problem.get("device", "cpu")))
    entry: dict[str, Any] = {
        "signature": problem.get("signature"),
        "device": device_slug(env),
        "device_type": "cuda" if device.startswith("cuda") else "cpu",
        "device_name": env.get("device_name"),
        "variant": spec["variant"],
        "label": attrs.get("label", spec["variant"]),
        "spec": spec,
        "plugin": _plugin_for(spec["variant"], list(study.user_attrs.get("plugins", []))),
        "problem": {k: v for k, v in problem.items() if k != "signature"},
        "study": study.study_name,
        "trial": trial.number,
        "trials_in_study": len(study.get_trials(deepcopy=False)),
        "env": env,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    entry.update({k: attrs.get(k) for k in RESULT_KEYS})
    retimed = study.user_attrs.get("retimed", {}).get(str(trial.number))
    if retimed:
        entry["retimed"] = retimed
    return entry


def merge(table: dict[str, Any], entry: dict[str, Any]) -> str:
    """Put `entry` into `table`; returns what happened (added, replaced, kept)."""
    per_device = table["entries"].setdefault(entry["signature"], {})
    old = per_device.get(entry["device"])
    if old is None:
        per_device[entry["device"]] = entry
        return "added"
    if (entry.get("latency_us") or float("inf")) <= (old.get("latency_us") or float("inf")):
        per_device[entry["device"]] = entry
        return "replaced"
    return f"kept the faster entry from {old.get('study')} ({old.get('latency_us'):.1f} us)"


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
    """Write/merge the table; returns one line per study."""
    storage = open_storage(storage_url)
    available = [s.study_name for s in optuna.get_all_study_summaries(storage, False)]
    chosen = names or available
    missing = [n for n in chosen if n not in available]
    if missing:
        raise ExportError(f"no study named {', '.join(missing)} in {storage_url}")
    if not chosen:
        raise ExportError(f"no study in {storage_url}")
    table = read_table(out)
    lines = []
    for name in chosen:
        study = optuna.load_study(study_name=name, storage=storage)
        entry = entry_of(study)
        if entry is None:
            lines.append(f"{name}: no measured COMPLETE trial, nothing exported")
            continue
        what = merge(table, entry)
        lines.append(
            f"{entry['signature']} on {entry['device']}: {entry['label']} "
            f"{entry['latency_us']:.1f} us ({entry['speedup']:.2f}x SDPA) [{what}]"
        )
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
    for line in export(url, names, Path(opts["out"])):
        print(line)
    print(f"tuning table: {opts['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
