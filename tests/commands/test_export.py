"""The tuning table: export from real studies, merge, and use in a model (kernels.tuned)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
import torch.nn.functional as F

from kernels import reference_attention, tuned
from study import export
from study.results import report
from tests.conftest import ROOT, TINY, chunk_plugin, run_study
from tests.results.test_report import finished_study  # noqa: F401 - the shared session fixture

# TINY without its seq_q, which the sweep sets.
TINY_SWEEP = [o for o in TINY if not o.startswith("problem.seq_q=")]


def fresh(shape_q, shape_kv, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(shape_q, generator=gen, dtype=dtype)
    k = torch.randn(shape_kv, generator=gen, dtype=dtype)
    v = torch.randn(shape_kv, generator=gen, dtype=dtype)
    return q, k, v


def check_close(out, q, k, v, causal):
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    exact = reference_attention(q, k, v, causal, q.shape[-1] ** -0.5)  # float64 plain math
    assert out.shape == expected.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    err = (out.double() - exact.double()).abs().max().item()
    sdpa_err = (expected.double() - exact.double()).abs().max().item()
    assert err <= 2 * sdpa_err + 1e-6, (err, sdpa_err)


def test_export_round_trips_into_a_callable(finished_study, tmp_path, fresh_seed, caplog):  # noqa: F811
    out = tmp_path / "tuned.json"
    assert export.main([f"storage.url={finished_study.url}", f"out={out}"]) == 0
    table = json.loads(out.read_text())
    problem = finished_study.study.user_attrs["problem"]
    (entry,) = table["entries"][problem["signature"]].values()
    verdict = finished_study.study.user_attrs["verdict"]
    assert entry["verdict"] == verdict["kind"] and entry["reason"] == verdict["sentence"]
    assert entry["env"]["device"] == "cpu" and entry["device_type"] == "cpu"
    if verdict["kind"] == "winner":  # the verdict's trial, with its interval
        (named,) = [
            t
            for t in report.measured_complete(finished_study.study)
            if t.number == verdict["trial"]
        ]
        assert entry["spec"] == named.user_attrs["spec"]
        assert entry["value_us"] == named.value
        assert entry["speedup_ci"] == named.user_attrs["speedup_ci"]
        assert entry["retimed_interval"] == verdict["retimed_ci"] and verdict["retimed_ci"][0] > 1
        if entry["variant"] == "my_chunk":
            assert entry["plugin"] == str(finished_study.plugin.resolve())
        expected = entry["label"]
    else:  # keep SDPA: an entry that says so, never the slower candidate
        assert entry["variant"] == "sdpa" and entry["spec"] == export.SDPA_SPEC
        assert entry["best_alternative"]["trial"] == verdict["trial"]
        expected = "sdpa"

    attn = tuned.load(out)
    shape_q = (1, problem["heads_q"], problem["seq_q"], problem["head_dim"])
    shape_kv = (1, problem["heads_kv"], problem["seq_kv"], problem["head_dim"])
    q, k, v = fresh(shape_q, shape_kv, fresh_seed)
    assert attn.explain(q, k, v) == expected
    check_close(attn(q, k, v), q, k, v, causal=False)
    q, k, v = fresh(shape_q, shape_kv, fresh_seed + 1)  # new inputs, same cached build
    check_close(attn(q, k, v), q, k, v, causal=False)
    assert len(attn._runners) == 1

    # an unknown shape and a causal call fall back to SDPA, with one log line each
    with caplog.at_level(logging.WARNING, logger="kernels.tuned"):
        q, k, v = fresh((2, 2, 40, 32), (2, 2, 40, 32), fresh_seed + 2)
        for _ in range(3):
            assert attn.explain(q, k, v) == "sdpa"
            torch.testing.assert_close(
                attn(q, k, v), F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0
            )
        q, k, v = fresh(shape_q, shape_kv, fresh_seed + 3)
        check_close(attn(q, k, v, is_causal=True), q, k, v, causal=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "kernels.tuned"]
    kept = 1 if expected == "sdpa" else 0  # "the study's verdict is to keep SDPA", once
    assert len(lines) == 2 + kept, lines
    assert "no tuned entry for B2-H2-S40-D32-fp32-full" in lines[kept]


def test_sweep_gives_one_study_per_problem_and_export_merges(tmp_path, fresh_seed):
    plugin = tmp_path / "plug.py"
    plugin.write_text(chunk_plugin("my_chunk"))
    proc = run_study(
        tmp_path,
        "-m",
        *TINY_SWEEP,
        "problem.seq_q=32,48",
        f"space.plugins=[{plugin}]",
        "space.variants=[my_chunk]",
        "space.mutations.layout=[bhsd]",
        "space.mutations.threads=[0]",
        "sampler=grid",
        "study.n_trials=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = f"sqlite:///{tmp_path / 'outputs' / 'studies.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(url))
    assert len(names) == 2 and names[0].startswith("B1-H2-Sq32kv64-") and "Sq48kv64" in names[1]

    out = tmp_path / "tuned.json"
    other = {"signature": "B9-H1-S8-D8-fp32-full", "device": "elsewhere", "latency_us": 1.0}
    out.write_text(
        json.dumps(
            {"format": tuned.FORMAT, "version": 1, "entries": {other["signature"]: {"x": other}}}
        )
    )
    assert export.main([f"storage.url={url}", f"study.name=[{names[0]}]", f"out={out}"]) == 0
    assert export.main([f"storage.url={url}", f"out={out}"]) == 0  # all studies; merges again
    entries = json.loads(out.read_text())["entries"]
    assert set(entries) == {
        "B9-H1-S8-D8-fp32-full",
        "B1-H2-Sq32kv64-D32-fp32-full",
        "B1-H2-Sq48kv64-D32-fp32-full",
    }
    winners = {}
    for sig, name in zip(
        ("B1-H2-Sq32kv64-D32-fp32-full", "B1-H2-Sq48kv64-D32-fp32-full"), names, strict=True
    ):
        (entry,) = entries[sig].values()
        verdict = optuna.load_study(study_name=name, storage=url).user_attrs["verdict"]
        assert entry["verdict"] == verdict["kind"] and entry["study"] == name
        if verdict["kind"] == "winner":
            assert entry["variant"] == "my_chunk"
            assert entry["plugin"] == str(plugin.resolve())
        else:
            assert entry["variant"] == "sdpa" and entry["plugin"] is None
        winners[int(sig.split("-Sq")[1].split("kv")[0])] = verdict["kind"] == "winner"

    # a fresh process imports the plugin from the table's path and matches SDPA and float64
    script = textwrap.dedent(f"""
        import torch, torch.nn.functional as F
        from kernels import reference_attention, tuned
        attn = tuned.load({str(out)!r})
        gen = torch.Generator().manual_seed({fresh_seed})
        for seq_q, winner in {winners!r}.items():
            q = torch.randn(1, 2, seq_q, 32, generator=gen)
            k = torch.randn(1, 2, 64, 32, generator=gen)
            v = torch.randn(1, 2, 64, 32, generator=gen)
            runs = attn.explain(q, k, v)
            assert runs.startswith("my_chunk") if winner else runs == "sdpa", runs
            out = attn(q, k, v)
            torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
            exact = reference_attention(q, k, v, False, 32 ** -0.5)
            assert (out.double() - exact).abs().max() < 1e-5
        print("ok")
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_merge_keeps_the_surer_speedup_per_device():
    """Absolute latencies of two studies are not comparable on a drifting machine: the merge
    keeps the larger confirmed speedup (re-timed lower bound; keep-SDPA counts 1)."""
    table = {"format": tuned.FORMAT, "version": 1, "entries": {}}
    old = {"signature": "S", "device": "d", "latency_us": 1.0, "study": "old", "label": "x"}
    sure = {"signature": "S", "device": "d", "retimed_interval": [1.4, 1.6], "study": "a"}
    surer = {"signature": "S", "device": "d", "retimed_interval": [1.5, 1.55], "study": "b"}
    keep = {"signature": "S", "device": "d", "verdict": "keep_sdpa", "study": "c"}
    other = {"signature": "S", "device": "e", "verdict": "keep_sdpa", "study": "d"}
    assert export.merge(table, old) == "added"
    assert export.merge(table, keep) == "replaced"  # an entry without an interval loses
    assert export.merge(table, sure) == "replaced"
    assert export.merge(table, surer) == "replaced"
    assert export.merge(table, sure).startswith("kept the entry from b")
    assert export.merge(table, keep).startswith("kept the entry from b")
    assert export.merge(table, other) == "added"
    assert table["entries"]["S"] == {"d": surer, "e": other}


def synthetic_study(url: str, name: str, verdict: dict | None) -> optuna.Study:
    """A stored study as study.run leaves one: env, problem, measured trials, the verdict."""
    from kernels import Problem

    problem = Problem(1, 2, 2, 16, 16, 8, dtype="float32")
    study = optuna.create_study(storage=url, study_name=name)
    study.set_user_attr("env", {"device": "cpu", "device_name": "Synthetic CPU"})
    study.set_user_attr("problem", problem.to_dict() | {"signature": problem.signature()})
    dist = {"variant": optuna.distributions.IntDistribution(0, 1)}
    for number, (variant, value, speedup) in enumerate(
        [("plain", 5.0, 0.8), ("chunked", 9.0, 1.2)]
    ):
        spec = {"variant": variant, "params": {"chunk": 4} if variant == "chunked" else {}}
        study.add_trial(
            optuna.trial.create_trial(
                params={"variant": number},
                distributions=dist,
                value=value,
                user_attrs={
                    "measured": True,
                    "spec": spec | {"mutations": {}},
                    "label": variant,
                    "value_us": value,
                    "paired_speedup": speedup,
                    "speedup_ci": [speedup - 0.1, speedup + 0.1],
                },
            )
        )
    if verdict is not None:
        study.set_user_attr("verdict", verdict)
    return study


def test_export_follows_the_verdict(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    named = {"kind": "winner", "trial": 1, "sentence": "chunked is ...", "retimed_ci": [1.1, 1.3]}
    keep = {
        "kind": "keep_sdpa",
        "trial": 0,
        "sentence": "default SDPA is ...",
        "candidate": "plain",
    }
    synthetic_study(url, "named", named)
    synthetic_study(url, "keep", keep)
    synthetic_study(url, "unjudged", None)
    for name, kind in (("named", "winner"), ("keep", "keep_sdpa")):
        out = tmp_path / f"{name}.json"
        assert export.main([f"storage.url={url}", f"study.name={name}", f"out={out}"]) == 0
        (per_device,) = json.loads(out.read_text())["entries"].values()
        (entry,) = per_device.values()
        assert entry["verdict"] == kind
        q = torch.randn(1, 2, 16, 8)
        with caplog.at_level(logging.WARNING, logger="kernels.tuned"):
            runs = tuned.load(out).explain(q, q, q)
        if kind == "winner":  # the verdict's trial, not the one of the lowest value
            assert entry["trial"] == 1 and entry["spec"]["variant"] == "chunked"
            assert runs == "chunked"
        else:
            assert entry["variant"] == "sdpa" and runs == "sdpa"
            assert "the study's verdict is to keep SDPA (default SDPA is ...)" in caplog.text
    lines = export.export(url, ["unjudged"], tmp_path / "unjudged.json")
    # made here, not judged by a study: its trials carry no verdict digest (study/seal.py)
    assert lines[0].startswith("unjudged: warning: study 'unjudged': 2 trial record(s) cannot be")
    assert lines[1:] == [
        "unjudged: no verdict (its run stopped before the re-timing, or predates verdicts), "
        "nothing exported; `python -m study.run` on it again re-times and judges"
    ]
    assert json.loads((tmp_path / "unjudged.json").read_text())["entries"] == {}


@pytest.mark.parametrize(
    ("extra", "dispatched", "why"),
    [
        ({"retimed_interval": [1.05, 1.2]}, True, ""),
        ({"retimed_interval": [0.95, 1.1]}, False, "re-timed [0.95, 1.10] x SDPA, not above 1"),
        ({"retimed_interval": [0.7, 0.8]}, False, "re-timed [0.70, 0.80] x SDPA, not above 1"),
        ({"retimed": {"speedup": 0.9}}, False, "measured 0.90x SDPA"),  # an older export
        ({"speedup": 1.5}, True, ""),
    ],
)
def test_tuned_dispatches_only_to_a_confirmed_winner(extra, dispatched, why, caplog):
    from kernels import Problem

    problem = Problem(1, 2, 2, 16, 16, 8, dtype="float32")
    device = tuned.device_slug(torch.device("cpu"))
    entry = {
        "device": device,
        "device_type": "cpu",
        "variant": "plain",
        "label": "plain",
        "spec": {"variant": "plain", "params": {}, "mutations": {}},
        "problem": problem.to_dict(),
    } | extra
    attn = tuned.TunedAttention(
        {"format": tuned.FORMAT, "entries": {problem.signature(): {device: entry}}}
    )
    q = torch.randn(1, 2, 16, 8)
    with caplog.at_level(logging.WARNING, logger="kernels.tuned"):
        assert attn.explain(q, q, q) == ("plain" if dispatched else "sdpa")
        torch.testing.assert_close(attn(q, q, q), F.scaled_dot_product_attention(q, q, q))
    assert (why in caplog.text) if why else not caplog.records


def test_mutations_of_the_winner_are_honoured(tmp_path, fresh_seed):
    plugin = tmp_path / "spy.py"
    plugin.write_text(
        textwrap.dedent("""
        import torch
        from kernels import register, plain_attention
        SEEN = []

        @register("spy")
        def build(problem):
            def run(q, k, v):
                SEEN.append((torch.get_num_threads(), q.is_contiguous(), k.is_contiguous()))
                return plain_attention(q, k, v, problem.causal, problem.scale)
            return run
    """)
    )
    from kernels import Problem

    problem = Problem(
        batch=1,
        heads_q=4,
        heads_kv=2,
        seq_q=24,
        seq_kv=24,
        head_dim=16,
        dtype="float32",
        causal=True,
    )
    device = tuned.device_slug(torch.device("cpu"))
    entry = {
        "signature": problem.signature(),
        "device": device,
        "device_type": "cpu",
        "variant": "spy",
        "label": "spy(layout=bshd_contiguous, threads=1)",
        "spec": {
            "variant": "spy",
            "params": {},
            "mutations": {"layout": "bshd_contiguous", "threads": 1},
        },
        "plugin": str(plugin),
        "problem": problem.to_dict(),
        "latency_us": 1.0,
    }
    attn = tuned.TunedAttention(
        {"format": tuned.FORMAT, "entries": {problem.signature(): {device: entry}}}
    )
    q, k, v = fresh((1, 4, 24, 16), (1, 2, 24, 16), fresh_seed)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))  # bshd views
    before = torch.get_num_threads()
    out = attn(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.get_num_threads() == before
    spy = sys.modules[next(m for m in sys.modules if m.startswith("kernel_study_plugin_spy_"))]
    assert spy.SEEN[-1] == (1, True, True)  # one thread, contiguous inputs inside the call
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # GQA without enable_gqa is SDPA's error, not a silent answer
    with pytest.raises(RuntimeError):
        attn(q, k, v, is_causal=True)


def test_namesake_plugin_variants_are_told_apart(tmp_path, caplog):
    import kernels

    files = []
    for name in ("first", "second"):
        path = tmp_path / f"{name}.py"
        path.write_text(
            textwrap.dedent("""
            from kernels import register, plain_attention

            @register("namesake")
            def build(problem):
                return lambda q, k, v: plain_attention(q, k, v, problem.causal, problem.scale)
            """)
        )
        files.append(path)
    kernels.load_plugin(files[0])
    # the table names the file the study used, not whichever namesake this process loaded
    assert export._plugin_for("namesake", [str(files[1])]) == str(files[1].resolve())
    assert export._plugin_for("plain", [str(files[1])]) is None
    with pytest.raises(export.ExportError):
        export._plugin_for("nowhere", [str(files[1])])
    # tuned.load refuses to run the first file's namesake for an entry of the second file
    from kernels import Problem

    problem = Problem(1, 2, 2, 16, 16, 8, dtype="float32")
    device = tuned.device_slug(torch.device("cpu"))
    entry = {
        "device": device,
        "device_type": "cpu",
        "variant": "namesake",
        "spec": {"variant": "namesake", "params": {}, "mutations": {}},
        "plugin": str(files[1]),
        "problem": problem.to_dict(),
    }
    attn = tuned.TunedAttention(
        {"format": tuned.FORMAT, "entries": {problem.signature(): {device: entry}}}
    )
    q = k = v = torch.randn(1, 2, 16, 8)
    with caplog.at_level(logging.WARNING, logger="kernels.tuned"):
        assert attn.explain(q, k, v) == "sdpa"
    assert "cannot build namesake" in caplog.text
