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
    best = report.measured_complete(finished_study.study)[0]
    assert entry["spec"] == best.user_attrs["spec"]
    assert entry["latency_us"] == best.value
    assert entry["speedup"] == best.user_attrs["speedup"]
    assert entry["env"]["device"] == "cpu" and entry["device_type"] == "cpu"
    if entry["variant"] == "my_chunk":
        assert entry["plugin"] == str(finished_study.plugin.resolve())

    attn = tuned.load(out)
    shape_q = (1, problem["heads_q"], problem["seq_q"], problem["head_dim"])
    shape_kv = (1, problem["heads_kv"], problem["seq_kv"], problem["head_dim"])
    q, k, v = fresh(shape_q, shape_kv, fresh_seed)
    assert attn.explain(q, k, v) == entry["label"]
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
    assert len(lines) == 2, lines
    assert "no tuned entry for B2-H2-S40-D32-fp32-full" in lines[0]


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
    for sig in ("B1-H2-Sq32kv64-D32-fp32-full", "B1-H2-Sq48kv64-D32-fp32-full"):
        (entry,) = entries[sig].values()
        assert entry["variant"] == "my_chunk"
        assert entry["plugin"] == str(plugin.resolve())

    # a fresh process imports the plugin from the table's path and matches SDPA and float64
    script = textwrap.dedent(f"""
        import torch, torch.nn.functional as F
        from kernels import reference_attention, tuned
        attn = tuned.load({str(out)!r})
        gen = torch.Generator().manual_seed({fresh_seed})
        for seq_q in (32, 48):
            q = torch.randn(1, 2, seq_q, 32, generator=gen)
            k = torch.randn(1, 2, 64, 32, generator=gen)
            v = torch.randn(1, 2, 64, 32, generator=gen)
            assert attn.explain(q, k, v).startswith("my_chunk"), attn.explain(q, k, v)
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


def test_merge_keeps_the_faster_entry_per_device():
    table = {"format": tuned.FORMAT, "version": 1, "entries": {}}
    slow = {"signature": "S", "device": "d", "latency_us": 20.0, "study": "a"}
    fast = {"signature": "S", "device": "d", "latency_us": 10.0, "study": "b"}
    other = {"signature": "S", "device": "e", "latency_us": 30.0, "study": "c"}
    assert export.merge(table, slow) == "added"
    assert export.merge(table, fast) == "replaced"
    assert export.merge(table, slow).startswith("kept the faster entry from b")
    assert export.merge(table, other) == "added"
    assert table["entries"]["S"] == {"d": fast, "e": other}


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
