"""Storage URLs -> Optuna storages. SQLite by default, beside the run folders, so reruns resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage


class StorageError(Exception):
    """The storage cannot be opened (one line for the user)."""


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def open_storage(url: str, heartbeat_s: int | None = None) -> optuna.storages.BaseStorage:
    """Open (and create where needed) the storage at `url`."""
    path = sqlite_path(url)
    if path is not None and str(path) not in ("", ":memory:"):
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if heartbeat_s:
        kwargs.update(
            heartbeat_interval=int(heartbeat_s),
            grace_period=int(heartbeat_s) * 4,
            failed_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    if path is not None:
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        return RDBStorage(url, **kwargs)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open storage {url}: {first}") from None
