"""Storage URLs -> Optuna storages, and joining a study that several workers may create at once.

- `sqlite:///outputs/studies.db` (default): one file beside the run folders, so reruns resume.
  Good for one machine and a few workers.
- `postgresql+psycopg://user[:password]@host:port/db` (`storage=postgres`): many workers on many
  machines. `mysql+pymysql://...` goes through the same code (SQLAlchemy), untested here.
- `journal:///path/file.journal` (`storage=journal`): an append-only Optuna journal file on a
  shared file system (NFS v3+), no database server. Three slashes: relative to the working
  directory; four: absolute (as for SQLite).

With `heartbeat_s`, each running trial's study process records a heartbeat every `heartbeat_s`
seconds; a trial whose heartbeat is older than `4 * heartbeat_s` (its process was killed, its
machine died) is marked FAIL by the next worker that starts a trial, and
`RetryHeartbeatStaleTrialCallback` queues a new trial with the same parameters (system attrs
`failed_trial` and `retry_history` name the dead one). Optuna's RDB storages (SQLite, PostgreSQL,
MySQL) support heartbeats natively; Optuna's JournalStorage does not, so `HeartbeatJournalStorage`
adds it (the beat is a trial system attr; machines sharing a journal need synchronised clocks).
"""

from __future__ import annotations

import contextlib
import random
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import (
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from study.errors import UserError, one_line

DEFAULT_STORAGE = "sqlite:///outputs/studies.db"  # relative to the working directory
GRACE_FACTOR = 4  # a trial is stale after GRACE_FACTOR missed heartbeats
MAX_RETRY = 3  # a trial whose worker keeps dying is retried at most this often
JOURNAL_PREFIX = "journal:///"


class StorageError(UserError):
    """The storage cannot be opened (one line for the user)."""


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def journal_path(url: str) -> Path | None:
    if not url.startswith(JOURNAL_PREFIX):
        return None
    return Path(url.removeprefix(JOURNAL_PREFIX))


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for logs, reports and results.json."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


def kind(url: str) -> str:
    """`sqlite`, `postgresql`, `mysql`, `journal` or the URL's scheme."""
    scheme = url.split("://", 1)[0]
    return scheme.split("+", 1)[0]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage plus the heartbeat protocol that its RDB storage has."""

    KEY = "kernel_study:heartbeat"

    def __init__(
        self,
        backend: Any,
        heartbeat_interval: int,
        grace_period: int,
        stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        super().__init__(backend)
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, self.KEY, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A retried trial inherits the dead trial's last beat: never count from before start.
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            last = max(float(trial.system_attrs.get(self.KEY, 0.0)), started)
            if now - last > self._grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_trial_callback


NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "lustre", "gpfs")


def _on_network_fs(path: Path) -> bool:
    """Is `path` on a network file system (where SQLite's WAL mode must not be used)?"""
    try:
        target = str(path.resolve())
        best, fstype = "", ""
        with open("/proc/mounts") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 3 or len(fields[1]) <= len(best):
                    continue
                if target == fields[1] or target.startswith(fields[1].rstrip("/") + "/"):
                    best, fstype = fields[1], fields[2]
        return fstype in NETWORK_FS
    except OSError:
        return True  # unknown: stay with SQLite's default (rollback journal)


def _sqlite_wal(storage: RDBStorage) -> None:
    """WAL journal and synchronous=NORMAL: one fsync per checkpoint instead of per commit.

    A trial writes about 30 small rows (params, user attrs), each its own commit; with the
    default rollback journal every commit waits for the disk (about 16 ms each on our VM, so
    0.5 s per trial). WAL stays safe for many processes on one machine and against a crash of
    the process; a power loss can lose the last trials. Not used on network file systems.
    """
    from sqlalchemy import event

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # reconnect with the pragmas


def _rdb_storage(url: str, kwargs: dict[str, Any], tries: int = 6) -> RDBStorage:
    """RDBStorage, retried: workers that open a new database at the same moment race to create
    its tables (IntegrityError on alembic_version, duplicate tables); the losers find them made.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(tries):
        try:
            with warnings.catch_warnings():  # heartbeat and retry are "experimental" since 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, **kwargs)
        except (IntegrityError, ProgrammingError, OperationalError) as exc:
            text = str(exc)
            racing = isinstance(exc, IntegrityError) or any(
                word in text for word in ("already exists", "locked", "duplicate key")
            )
            if not racing or attempt == tries - 1:
                raise
            time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _retry() -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def open_storage(url: str, heartbeat_s: int | None = None) -> optuna.storages.BaseStorage:
    """Open (and create where needed) the storage at `url`."""
    heartbeat: dict[str, Any] = {}
    if heartbeat_s:
        heartbeat = {
            "heartbeat_interval": int(heartbeat_s),
            "grace_period": int(heartbeat_s) * GRACE_FACTOR,
        }
    journal = journal_path(url)
    if journal is not None:
        if str(journal) in ("", "."):
            raise StorageError(f"storage.url={url} names no file (journal:///path/file.journal)")
        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
            # The open(O_EXCL) lock works on local disks and NFS v3+ (Optuna's advice).
            backend = JournalFileBackend(
                str(journal), lock_obj=JournalFileOpenLock(str(journal) + ".lock")
            )
        except Exception as exc:
            raise StorageError(f"cannot open storage {redact(url)}: {one_line(exc)}") from None
        if not heartbeat:
            return JournalStorage(backend)
        return HeartbeatJournalStorage(
            backend,
            heartbeat["heartbeat_interval"],
            heartbeat["grace_period"],
            _retry(),
        )

    path = sqlite_path(url)
    if path is not None and str(path) not in ("", ":memory:"):
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = dict(heartbeat)
    if heartbeat:
        kwargs["heartbeat_stale_trial_callback"] = _retry()
    if path is not None:
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif kind(url) in ("postgresql", "mysql"):
        # Connections live for hours between trials; a server restart must not kill the study.
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    try:
        storage = _rdb_storage(url, kwargs)
        if path is not None and str(path) not in ("", ":memory:") and not _on_network_fs(path):
            _sqlite_wal(storage)
        return storage
    except ModuleNotFoundError as exc:
        hint = ""
        if kind(url) == "postgresql":
            hint = " (pip install 'psycopg[binary]', or `pip install -e .[postgres]`)"
        raise StorageError(f"cannot open storage {redact(url)}: {one_line(exc)}{hint}") from None
    except Exception as exc:
        raise StorageError(f"cannot open storage {redact(url)}: {one_line(exc)}") from None


def join_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    attrs: dict[str, Any],
    wait_s: float = 60.0,
) -> tuple[optuna.Study, bool]:
    """Create the study, or join it when it exists: safe when many workers start at once.

    Exactly one caller creates the study (the storage's unique name decides: the others get
    DuplicatedStudyError and load it) and writes `attrs` (the environment, problem, space).
    A joiner that finds a study without trials and without those attrs waits up to `wait_s`
    for the creator to write them, so that it compares its environment with the creator's.
    Returns (study, created).
    """
    try:
        storage.create_new_study([StudyDirection.MINIMIZE], name)
        created = True
    except DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    if created:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return study, True
    deadline = time.monotonic() + wait_s
    while not all(key in study.user_attrs for key in attrs):
        if study.get_trials(deepcopy=False) or time.monotonic() > deadline:
            break  # a study made by another tool, or a creator that died before writing
        time.sleep(0.2)
    return study, False
