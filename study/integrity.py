"""What a study keeps out of its candidates' reach, said once for the commands that run them.

`sandbox_for`: the containment of every candidate process of a study (study/measure/contain.py):
bwrap where it works (`worker.sandbox=auto`) or not (`off`), the paths candidates may write
(`worker.writable`, refused where they would cover the storage, the run folder or the key
store), and the key store hidden. `open_key`: a study's verdict key on joining it, after its
records were checked (study/seal.py): a tampered record refuses the resume.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from study.errors import UserError
from study.measure import contain
from study.seal import Key, KeyStore, check, config_keys_root
from study.storage import journal_path, sqlite_path


class TamperedStudy(UserError):
    """A study's stored records no longer match the verdicts they were sealed with."""


def _covers(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def sandbox_for(
    worker_cfg: Any,
    storage_url: str | None = None,
    store: KeyStore | None = None,
    protected: Sequence[Path] = (),
) -> contain.Sandbox:
    """The candidates' sandbox of a command; its one-line warning is printed here when they run
    without it. `protected`: more paths they must not be able to write (the run folder)."""
    mode = str(worker_cfg.get("sandbox", "auto"))
    writable = [Path(p).expanduser().resolve() for p in (worker_cfg.get("writable") or [])]
    url = storage_url or ""
    files = [f for f in (sqlite_path(url), journal_path(url)) if f is not None]
    keys = [store.root] if store is not None else []
    guarded = [Path(p).resolve() for p in (*files, *protected, *keys)]
    for path in writable:
        for inner in guarded:
            if _covers(path, inner) or _covers(inner, path):
                raise UserError(
                    f"worker.writable={path} would let candidates write {inner}; "
                    "name a folder outside the storage, run folder and key store"
                )
    hidden = [str(p) for p in (*keys, config_keys_root()) if p.is_dir()]
    sandbox = contain.Sandbox(
        enabled=mode == "auto",
        writable=tuple(str(p) for p in writable),
        hidden=tuple(hidden),
    )
    warning = sandbox.warning()
    if warning:
        print(warning, file=sys.stderr)
    return sandbox


def open_key(study: optuna.Study, store: KeyStore) -> Key:
    """Check the study's records, then return its key (made now for a study that had none)."""
    found = check(study, store)
    if found.tampered:
        raise TamperedStudy(
            found.lines()[0] + "; rerun under a new study.name (the storage was written "
            "outside kernel-study)"
        )
    for line in found.lines():
        print(f"warning: {line}", file=sys.stderr)
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    return store.ensure(study.study_name, max(numbers, default=-1) + 1)
