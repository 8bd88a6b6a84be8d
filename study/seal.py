"""Verdict digests: each trial's record is sealed as judged, with a per-study secret kept outside
the storage, so that a record rewritten later (by a detached process, a hand, a bug) is found.

When a trial ends, the objective stores `verdict_digest` = HMAC-SHA256 over the study name, the
trial number, its state, its value, its params and every user attr it has then (the record a
report and `study.export` read). The key is the study's own 32 random bytes, in a 0600 file of
a key store that candidate processes never see (study/measure/contain.py hides it in the
sandbox; the key is never passed to a worker): beside a SQLite or journal file
(`<file>.keys/`), else in the user's config dir (`~/.config/kernel-study/keys/<url hash>/`),
or `$KERNEL_STUDY_KEYS`.

`check` answers per study: which trials are tampered (a COMPLETE or PRUNED record without a
digest, a digest that does not match, or one made with a key this store never issued for a
file storage) and how many it cannot verify (recorded before the study had a key here, or
sealed on another machine of a shared database server, whose key stays on that machine). A
FAIL without a digest is not tampering: the heartbeat fails a trial whose process died before
it was judged, and a FAIL never ranks. Attrs named in ANNOTATIONS are added after the verdict
(the log artifact) and are outside the digest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from study.errors import UserError
from study.storage import journal_path, redact, sqlite_path

DIGEST_ATTR = "verdict_digest"
ANNOTATIONS = ("log_artifact",)
VERSION = "v1"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class KeyStoreError(UserError):
    """The key store cannot be created or read (one line for the user)."""


@dataclass(frozen=True)
class Key:
    secret: bytes
    id: str
    from_trial: int  # trials numbered below this one predate the key


def config_keys_root() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "kernel-study" / "keys"


class KeyStore:
    """One 0600 JSON file per study under `root` (0700)."""

    def __init__(self, root: Path, beside_file: bool) -> None:
        self.root = Path(root)
        # Beside a SQLite/journal file every writer of the storage shares this store: a key
        # id it never issued is a forgery. On a database server each machine keeps its own.
        self.beside_file = beside_file

    def create(self) -> KeyStore:
        """Make the store's folder (0700): before any candidate process starts, so that the
        sandbox can hide it. Reading needs no folder."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise KeyStoreError(
                f"cannot create the verdict key store {self.root}: {exc.strerror or exc}"
            ) from None
        return self

    def _path(self, study_name: str) -> Path:
        return self.root / (hashlib.sha256(study_name.encode()).hexdigest()[:24] + ".json")

    def get(self, study_name: str) -> Key | None:
        try:
            data = json.loads(self._path(study_name).read_text())
            return Key(bytes.fromhex(data["key"]), str(data["id"]), int(data["from_trial"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(
                f"the verdict key of study '{study_name}' in {self.root} is unreadable: {exc}"
            ) from None

    def ensure(self, study_name: str, from_trial: int) -> Key:
        """The study's key, created (atomically, once) when it has none here."""
        key = self.get(study_name)
        if key is not None:
            return key
        self.create()
        secret = secrets.token_bytes(32)
        data = {
            "study": study_name,
            "key": secret.hex(),
            "id": hashlib.sha256(secret).hexdigest()[:12],
            "from_trial": from_trial,
        }
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".new-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.link(tmp, self._path(study_name))  # fails if another process was first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        key = self.get(study_name)
        assert key is not None
        return key


def store_for(url: str) -> KeyStore:
    """The key store of a storage URL (see the module docstring)."""
    if os.environ.get("KERNEL_STUDY_KEYS"):
        return KeyStore(Path(os.environ["KERNEL_STUDY_KEYS"]), beside_file=True)
    file = sqlite_path(url) or journal_path(url)
    if file is not None and str(file) not in ("", ":memory:"):
        return KeyStore(file.with_name(file.name + ".keys"), beside_file=True)
    name = hashlib.sha256(redact(url).encode()).hexdigest()[:16]
    return KeyStore(config_keys_root() / name, beside_file=False)


def _canonical(value: Any) -> Any:
    """What the storage gives back (JSON round trip: tuples are lists)."""
    return json.loads(json.dumps(value, default=str))


def digest(
    key: Key,
    study_name: str,
    number: int,
    state: TrialState,
    value: float | None,
    params: dict[str, Any],
    attrs: dict[str, Any],
) -> str:
    sealed = {k: v for k, v in attrs.items() if k != DIGEST_ATTR and k not in ANNOTATIONS}
    blob = json.dumps(
        {
            "study": study_name,
            "number": number,
            "state": state.name,
            "value": None if value is None else float(value),
            "params": _canonical(params),
            "attrs": _canonical(sealed),
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    mac = hmac.new(key.secret, blob.encode(), hashlib.sha256).hexdigest()
    return f"{VERSION}:{key.id}:{mac}"


class Sealer:
    """Called by the objective as a trial ends: stores the trial's verdict digest."""

    def __init__(self, key: Key) -> None:
        self.key = key

    def __call__(self, trial: optuna.Trial, state: TrialState, value: float | None) -> None:
        trial.set_user_attr(
            DIGEST_ATTR,
            digest(
                self.key,
                trial.study.study_name,
                trial.number,
                state,
                value,
                dict(trial.params),
                dict(trial.user_attrs),
            ),
        )


@dataclass
class Findings:
    """What `check` found in one study."""

    study: str
    tampered: dict[int, str] = field(default_factory=dict)
    unverified: int = 0

    def lines(self) -> list[str]:
        """One line each: the tampered records, the records that cannot be verified here."""
        lines = []
        if self.tampered:
            shown = "; ".join(f"trial {n}: {why}" for n, why in sorted(self.tampered.items())[:3])
            more = f" and {len(self.tampered) - 3} more" if len(self.tampered) > 3 else ""
            lines.append(
                f"study '{self.study}': {len(self.tampered)} trial record(s) were changed after "
                f"they were judged ({shown}{more}); they are not trusted"
            )
        if self.unverified:
            lines.append(
                f"study '{self.study}': {self.unverified} trial record(s) cannot be verified "
                "here (judged before this key store held the study's key, or on another machine)"
            )
        return lines


def check(study: optuna.Study, store: KeyStore) -> Findings:
    """Verify every finished trial of `study` against its digest (see the module docstring)."""
    found = Findings(study.study_name)
    key = store.get(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=FINISHED):
        got = trial.user_attrs.get(DIGEST_ATTR)
        if key is None or trial.number < key.from_trial:
            found.unverified += 1
            continue
        if not isinstance(got, str) or got.count(":") != 2:
            if trial.state != TrialState.FAIL or got is not None:
                found.tampered[trial.number] = "no verdict digest"
            continue
        _, key_id, _ = got.split(":")
        if key_id != key.id:
            if store.beside_file:
                found.tampered[trial.number] = "sealed with a key this study never had"
            else:
                found.unverified += 1
            continue
        expected = digest(
            key,
            study.study_name,
            trial.number,
            trial.state,
            trial.value if trial.state == TrialState.COMPLETE else None,
            trial.params,
            trial.user_attrs,
        )
        if not hmac.compare_digest(got, expected):
            found.tampered[trial.number] = "the record differs from its verdict digest"
    return found
