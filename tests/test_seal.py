"""Verdict digests (study/seal.py) on a real SQLite file, written back by hand as an attacker would.

Each case seals trials through `Sealer` as the objective does, then rewrites the file with the
sqlite3 module (not through Optuna) and checks what `check` reports: exactly the rewritten
trials, with the reason, and nothing for the untouched ones.
"""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import seal


def _study(tmp_path: Path, n: int = 3) -> tuple[optuna.Study, seal.KeyStore, str]:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    store = seal.store_for(url).create()
    study = optuna.create_study(study_name="s", storage=url)
    sealer = seal.Sealer(store.ensure("s", 0))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_int("x", 0, 9)
        trial.set_user_attr("latency_us", 10.0 + x)
        trial.set_user_attr("spec", {"variant": "plain", "params": {"chunk": (64, 128)}})
        if trial.number == 1:
            trial.set_user_attr("rejected_by", "tolerance")
            sealer(trial, TrialState.PRUNED, None)
            raise optuna.TrialPruned()
        sealer(trial, TrialState.COMPLETE, 10.0 + x)
        return 10.0 + x

    study.optimize(objective, n_trials=n)
    return study, store, str(tmp_path / "studies.db")


def _sql(db: str, query: str, *args: object) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute(query, args).rowcount >= 1, query


def _reload(url_db: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{url_db}")


def test_untouched_records_verify_and_the_key_is_private(tmp_path):
    study, store, _ = _study(tmp_path)
    assert seal.check(study, store) == seal.Findings("s")
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    assert store.root == tmp_path / "studies.db.keys"
    (key_file,) = store.root.iterdir()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert json.loads(key_file.read_text())["study"] == "s"


def test_rewritten_value_attr_and_state_are_found(tmp_path):
    study, store, db = _study(tmp_path, n=4)
    ids = {t.number: t._trial_id for t in study.trials}
    _sql(db, "UPDATE trial_values SET value = value / 100 WHERE trial_id = ?", ids[0])
    _sql(
        db,
        "UPDATE trial_user_attributes SET value_json = '0.5' WHERE trial_id = ? AND key = ?",
        ids[2],
        "latency_us",
    )
    _sql(db, "UPDATE trials SET state = 'COMPLETE' WHERE trial_id = ?", ids[1])
    _sql(db, "INSERT INTO trial_values (trial_id, objective, value, value_type) "
         "VALUES (?, 0, 0.01, 'FINITE')", ids[1])  # fmt: skip
    found = seal.check(_reload(db), store)
    assert found.tampered == dict.fromkeys(
        [0, 1, 2], "the record differs from its verdict digest"
    ), found
    assert found.unverified == 0
    assert "3 trial record(s) were changed after they were judged" in found.lines()[0]


def test_a_removed_digest_or_a_forged_key_id_is_tampering_but_an_unsealed_fail_is_not(tmp_path):
    study, store, db = _study(tmp_path, n=4)
    ids = {t.number: t._trial_id for t in study.trials}
    _sql(db, "DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = ?", ids[0],
         seal.DIGEST_ATTR)  # fmt: skip
    forged = json.dumps("v1:000000000000:" + "0" * 64)
    _sql(db, "UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = ?",
         forged, ids[2], seal.DIGEST_ATTR)  # fmt: skip
    # trial 3 as the heartbeat leaves a dead process's trial: FAIL, never sealed
    _sql(db, "DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = ?", ids[3],
         seal.DIGEST_ATTR)  # fmt: skip
    _sql(db, "DELETE FROM trial_values WHERE trial_id = ?", ids[3])
    _sql(db, "UPDATE trials SET state = 'FAIL' WHERE trial_id = ?", ids[3])
    found = seal.check(_reload(db), store)
    assert found.tampered == {0: "no verdict digest", 2: "sealed with a key this study never had"}


def test_an_added_attr_is_tampering_and_the_log_artifact_is_not(tmp_path):
    study, store, db = _study(tmp_path)
    ids = {t.number: t._trial_id for t in study.trials}
    for number, key in ((0, "speedup"), (2, "log_artifact")):
        _sql(db, "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
             ids[number], key, json.dumps(99.0))  # fmt: skip
    found = seal.check(_reload(db), store)
    assert found.tampered == {0: "the record differs from its verdict digest"}


def test_trials_before_the_key_or_without_one_are_unverified_not_tampered(tmp_path):
    study, store, db = _study(tmp_path)
    elsewhere = seal.KeyStore(tmp_path / "other.keys", beside_file=True)
    found = seal.check(study, elsewhere)  # the key store was not copied with the file
    assert found.tampered == {} and found.unverified == 3
    assert "3 trial record(s) cannot be verified here" in found.lines()[0]
    key = elsewhere.ensure("s", from_trial=3)
    assert key.from_trial == 3 and elsewhere.ensure("s", from_trial=0) == key  # made once
    assert seal.check(study, elsewhere).unverified == 3


def test_a_database_server_store_counts_another_machines_key_as_unverified(tmp_path):
    study, store, db = _study(tmp_path, n=1)
    server = seal.KeyStore(tmp_path / "server.keys", beside_file=False)
    server.ensure("s", from_trial=0)  # this machine's key; trial 0 was sealed by another one
    found = seal.check(study, server)
    assert found.tampered == {} and found.unverified == 1


def test_store_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("KERNEL_STUDY_KEYS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert seal.store_for("sqlite:///a/b.db").root == Path("a/b.db.keys")
    assert seal.store_for("journal:///j/x.journal").root == Path("j/x.journal.keys")
    server = seal.store_for("postgresql+psycopg://u:pw@h:5432/db")
    assert server.root.parent == tmp_path / "cfg" / "kernel-study" / "keys"
    assert not server.beside_file
    # the password is not part of the store's identity
    assert seal.store_for("postgresql+psycopg://u:other@h:5432/db").root == server.root
    monkeypatch.setenv("KERNEL_STUDY_KEYS", str(tmp_path / "k"))
    assert seal.store_for("sqlite:///a/b.db").root == tmp_path / "k"


def test_an_unreadable_key_is_a_user_error(tmp_path):
    store = seal.KeyStore(tmp_path / "k", beside_file=True).create()
    store.ensure("s", 0)
    (key_file,) = store.root.iterdir()
    key_file.write_text("{not json")
    with pytest.raises(seal.KeyStoreError, match="unreadable"):
        store.get("s")
