"""What a run publishes for the dashboard (study/dashboard.py serves it).

Each study's Markdown note (the verdict, the summary table and the environment, rewritten at the
end of every run; the verdict and the re-timing are kept in the study's user attrs too),
and, per FAIL or PRUNED trial that ran, its full worker log as a trial artifact in a
FileSystemArtifactStore (`LogArtifacts` wraps the objective: an artifact can only be attached
while the trial is still running). The store is `artifacts/` beside a SQLite file, else
`outputs/artifacts`.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna

log = logging.getLogger(__name__)

DEFAULT_ARTIFACTS = Path("outputs/artifacts")
# what the study keeps of each re-timed candidate (study/retime.py summarise)
RETIMED_KEYS = (
    "status",
    "error",
    "rejected_by",
    "latency_us",
    "baseline_latency_us",
    "speedup",
    "paired_speedup",
    "speedup_ci",
    "timing",
    "latency_b2b_us",
    "baseline_latency_b2b_us",
    "b2b_speedup",
    "b2b_speedup_ci",
    "rounds",
    "round_speedups",
)


def artifacts_dir_for(storage_url: str) -> Path:
    """Where the logs of a storage's trials live: `artifacts/` beside a SQLite file, else
    `outputs/artifacts` (relative to the working directory)."""
    if storage_url.startswith("sqlite:///"):
        db = storage_url.removeprefix("sqlite:///")
        if db and db != ":memory:":
            return Path(db).parent / "artifacts"
    return DEFAULT_ARTIFACTS


def artifact_store(root: Path | str = DEFAULT_ARTIFACTS):
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def save_note(study: optuna.Study, markdown: str) -> None:
    """Replace the study's dashboard note (shown on the study page)."""
    import optuna_dashboard

    optuna_dashboard.save_note(study, markdown)


def publish(
    study: optuna.Study,
    note: str,
    plugins: list[str],
    retimed: dict[int, dict[str, Any]],
    verdict: dict[str, Any] | None = None,
) -> None:
    """End of a run: the study's note, the plugin files it used, the last re-timing and the
    verdict (`study.export` follows it)."""
    try:
        save_note(study, note)
        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore")
            study.set_metric_names(["value_us"])  # the dashboard's axis label
    except Exception as exc:
        log.warning("could not save the dashboard note: %s", exc)
    known = list(study.user_attrs.get("plugins", []))
    study.set_user_attr("plugins", known + [p for p in plugins if p not in known])
    last = dict(study.user_attrs.get("retimed", {}))
    for number, result in retimed.items():
        last[str(number)] = {k: result[k] for k in RETIMED_KEYS if k in result}
    study.set_user_attr("retimed", last)
    if verdict is not None:
        study.set_user_attr("verdict", verdict)


def log_section(text: str, number: int) -> str | None:
    """The worker-log section of trial `number` (the last one, if it ran more than once)."""
    header = re.compile(rf"^--- evaluate trial {number}: .*$", re.M)
    found = list(header.finditer(text))
    if not found:
        return None
    start = found[-1].start()
    following = re.compile(r"^--- \w+ ", re.M).search(text, found[-1].end())
    return text[start : following.start() if following else len(text)]


class LogArtifacts:
    """Wraps an objective: a FAIL or PRUNED trial that ran gets its worker log as an artifact.

    The log is read from the run folder's worker logs (`*.log`, section `--- evaluate trial N:`);
    the objective's shorter `log_tail` attr is the fallback. Never fails the trial itself.
    """

    def __init__(self, objective: Any, log_dir: Path, artifacts: Path | str = DEFAULT_ARTIFACTS):
        self.objective = objective
        self.log_dir = Path(log_dir)
        self.artifacts = Path(artifacts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.objective, name)

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self.objective(trial)
        except optuna.TrialPruned:
            self.attach(trial, "pruned")
            raise
        except Exception:
            self.attach(trial, "fail")
            raise

    def find_log(self, trial: optuna.Trial) -> str | None:
        for path in sorted(self.log_dir.glob("*.log")):
            try:
                section = log_section(path.read_text(errors="replace"), trial.number)
            except OSError:
                continue
            if section:
                return section
        tail = trial.user_attrs.get("log_tail")
        return str(tail) if tail else None

    def attach(self, trial: optuna.Trial, state: str) -> None:
        if not trial.user_attrs.get("measured"):
            return  # a copy of an earlier verdict, or invalid params: nothing ran
        try:
            from optuna.artifacts import upload_artifact

            attrs = trial.user_attrs
            summary = [f"trial {trial.number}: {state.upper()} {attrs.get('label', '')}"]
            why = ("rejected_by", "detail", "error")
            summary += [f"{k}: {attrs[k]}" for k in why if k in attrs]
            if "spec" in attrs:
                summary.append(f"spec: {json.dumps(attrs['spec'], sort_keys=True)}")
            text = "\n".join(summary) + "\n\n" + (self.find_log(trial) or "(no worker log)\n")
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"trial-{trial.number}-{state}.log"
                path.write_text(text)
                artifact_id = upload_artifact(
                    artifact_store=artifact_store(self.artifacts),
                    file_path=str(path),
                    study_or_trial=trial,
                    mimetype="text/plain",
                )
            trial.set_user_attr("log_artifact", artifact_id)
        except Exception as exc:  # the log is a convenience: never lose the trial over it
            log.warning("could not attach the log of trial %s: %s", trial.number, exc)


def attach_logs(objective: Any, log_dir: Path, artifacts: Path | str = DEFAULT_ARTIFACTS) -> Any:
    return LogArtifacts(objective, log_dir, artifacts)
