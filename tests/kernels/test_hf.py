"""The transformers backend (kernels/hf.py) on a tiny random Llama with grouped-query heads.

The table is tuned by real (short) studies on the model's own prefill and first decode shapes
and exported by study.export; for the dispatch under test each entry is then pointed at its
study's best measured candidate (see `table`). `generate` through the backend must give the
tokens of transformers' `sdpa` implementation and logits within the gate's bound of a float64
model;
the torch profiler counts the SDPA calls independently of the backend's own count, so the
tuned path is shown to run instead of SDPA; shapes not in the table, masks and the kernel hub's
name clash are checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import transformers
from optuna.trial import TrialState
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import causal_mask_function, eager_mask, sdpa_mask

from kernels import hf, tuned
from study import export
from study.measure.gate import ATOL
from tests.conftest import ROOT, run_study

LAYERS, HEADS, KV_HEADS, HEAD_DIM, PROMPT, NEW = 2, 4, 2, 16, 16, 3
CONFIG = dict(
    vocab_size=128,
    hidden_size=HEADS * HEAD_DIM,
    intermediate_size=128,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    head_dim=HEAD_DIM,
    max_position_embeddings=64,
)
SHAPE = [
    "problem=small_cpu",
    f"problem.heads_q={HEADS}",
    f"problem.heads_kv={KV_HEADS}",
    f"problem.head_dim={HEAD_DIM}",
    "bench=quick",
    "study.retime_top_k=1",
    "space.variants=[grouped,chunked]",  # not SDPA: the profiler tells the paths apart
    "space.mutations.layout=[bhsd,bshd_contiguous]",
    "space.mutations.threads=[0]",
    "sampler=grid",
    "study.n_trials=2",
]
PREFILL = [f"problem.seq_q={PROMPT}", f"problem.seq_kv={PROMPT}", "problem.causal=true"]
DECODE = ["problem.seq_q=1", f"problem.seq_kv={PROMPT + 1}", "problem.causal=false"]
NO_ENTRY = "sdpa: a shape, dtype or device the table has no entry for"
SIGNATURES = {
    f"B1-H{HEADS}kv{KV_HEADS}-S{PROMPT}-D{HEAD_DIM}-fp32-causal",
    f"B1-H{HEADS}kv{KV_HEADS}-Sq1kv{PROMPT + 1}-D{HEAD_DIM}-fp32-full",
}
MASKED = "sdpa: an attention_mask"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two short real studies (the prefill and the first decode step), exported into one table;
    (the table, the storage URL)."""
    cwd = tmp_path_factory.mktemp("hf")
    for shape in (PREFILL, DECODE):
        proc = run_study(cwd, *SHAPE, *shape)
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = cwd / "tuned.json"
    url = f"sqlite:///{cwd / 'outputs' / 'studies.db'}"
    assert export.main([f"storage.url={url}", f"out={out}"]) == 0
    entries = tuned.load(out).entries
    assert set(entries) == SIGNATURES
    for per_device in entries.values():
        (entry,) = per_device.values()
        assert entry["verdict"] in ("winner", "keep_sdpa"), entry
        assert (entry["variant"] == "sdpa") == (entry["verdict"] == "keep_sdpa"), entry
    return out, url


@pytest.fixture(scope="module")
def table(exported: tuple[Path, str]) -> Path:
    """The exported table with every entry made its study's best measured candidate.

    At these toy shapes whether grouped or chunked beats SDPA is a matter of microseconds and
    load, and the export follows the study's verdict (keep SDPA, mostly; that rule is
    tests/commands/test_export.py's and test_verdict.py's). What this module tests is the
    backend: that a winner entry really runs in place of SDPA and gives SDPA's tokens. So each
    entry gets its study's best COMPLETE trial (the spec the study measured, built-in variant)
    as a winner; the figures that would vouch for it are left out, so `tuned.refusal` has none
    to refuse on."""
    out, url = exported
    data = json.loads(out.read_text())
    for per_device in data["entries"].values():
        for entry in per_device.values():
            study = optuna.load_study(study_name=entry["study"], storage=url)
            complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
            best = min(complete, key=lambda t: t.value)
            spec = best.user_attrs["spec"]
            for key in ("reason", "best_alternative", "retimed", "retimed_interval", "speedup"):
                entry.pop(key, None)
            entry.update(verdict="winner", variant=spec["variant"], spec=spec, plugin=None)
            entry.update(label=best.user_attrs.get("label", spec["variant"]), trial=best.number)
    winners = out.with_name("winners.json")
    winners.write_text(json.dumps(data))
    return winners


@pytest.fixture(scope="module")
def models(table: Path):
    """(backend, our model, the same weights under `sdpa`, the same weights in float64)."""
    backend = tuned.register_transformers(table, name="kernel_study_test")
    torch.manual_seed(0)
    # one config object per model: from_config writes the implementation into it
    ref = AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG), attn_implementation="sdpa")
    ours = AutoModelForCausalLM.from_config(
        LlamaConfig(**CONFIG), attn_implementation="kernel_study_test"
    )
    ours.load_state_dict(ref.state_dict())
    exact = AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG), attn_implementation="eager")
    exact.load_state_dict(ref.state_dict())
    assert ours.config._attn_implementation == "kernel_study_test"
    return backend, ours.eval(), ref.eval(), exact.double().eval()


def generate(model, ids, mask=None):
    with torch.no_grad():
        return model.generate(
            ids,
            attention_mask=torch.ones_like(ids) if mask is None else mask,
            max_new_tokens=NEW,
            min_new_tokens=NEW,  # a random model may emit its end token early: every step runs
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )


def sdpa_calls(model, ids, mask=None) -> tuple[int, object]:
    """(aten SDPA calls during generate, its output), counted by the torch profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = generate(model, ids, mask)
    events = [e for e in prof.events() if e.name == "aten::scaled_dot_product_attention"]
    return len(events), out


def test_generate_runs_the_winners_and_matches_sdpa(models, fresh_seed):
    backend, ours, ref, exact = models
    backend.reset()
    gen = torch.Generator().manual_seed(fresh_seed)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, PROMPT), generator=gen)
    ref_sdpa, want = sdpa_calls(ref, ids)
    our_sdpa, got = sdpa_calls(ours, ids)
    assert torch.equal(got.sequences, want.sequences)

    # prefill and the first decode step are in the table; the next decode step's cache is not
    assert backend.tuned_calls == 2 * LAYERS, backend.summary()
    assert backend.counts[NO_ENTRY] == (NEW - 2) * LAYERS, backend.summary()
    assert backend.sdpa_calls == (NEW - 2) * LAYERS
    assert ref_sdpa == NEW * LAYERS and our_sdpa == backend.sdpa_calls
    paths = [p for p in backend.counts if p.startswith("tuned: ")]
    assert len(paths) == 2 and all(backend.counts[p] == LAYERS for p in paths), paths

    # logits: within the gate's bound (twice the error of SDPA's, plus its atol) of float64
    with torch.no_grad():
        truth = exact(got.sequences).logits[0, PROMPT - 1 : PROMPT - 1 + NEW]
    for step, (ours_step, ref_step) in enumerate(zip(got.logits, want.logits, strict=True)):
        err = (ours_step[0].double() - truth[step]).abs().max().item()
        ref_err = (ref_step[0].double() - truth[step]).abs().max().item()
        assert err <= 2 * ref_err + ATOL[torch.float32], (step, err, ref_err)
    assert not transformers.utils.import_utils.is_kernels_available()


def test_from_pretrained_takes_the_backend_too(models, tmp_path, fresh_seed):
    backend, _, ref, _ = models
    ref.save_pretrained(tmp_path / "tiny")  # a local checkpoint: no download
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "tiny", attn_implementation="kernel_study_test"
    ).eval()
    gen = torch.Generator().manual_seed(fresh_seed)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, PROMPT), generator=gen)
    backend.reset()
    with torch.no_grad():
        got, want = loaded(ids).logits, ref(ids).logits
    assert backend.tuned_calls == LAYERS and backend.sdpa_calls == 0, backend.summary()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_padded_prompt_runs_transformers_sdpa_path_exactly(models, fresh_seed):
    backend, ours, ref, _ = models
    backend.reset()
    gen = torch.Generator().manual_seed(fresh_seed)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, PROMPT), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: transformers passes a boolean mask, prefill and decode
    want = generate(ref, ids, mask)
    got = generate(ours, ids, mask)
    assert dict(backend.counts) == {MASKED: NEW * LAYERS}, backend.summary()
    assert torch.equal(got.sequences, want.sequences)
    for ours_step, ref_step in zip(got.logits, want.logits, strict=True):
        torch.testing.assert_close(ours_step, ref_step, rtol=0, atol=0)


def test_masks_equivalent_to_is_causal_or_to_none_are_recognised():
    def sdpa(q_length, kv_length, q_offset=0, attention_mask=None):
        return sdpa_mask(
            batch_size=2,
            q_length=q_length,
            kv_length=kv_length,
            q_offset=q_offset,
            mask_function=causal_mask_function,
            attention_mask=attention_mask,
            allow_is_causal_skip=False,
        )

    assert hf.mask_pattern(sdpa(16, 16), 16, 16) == "causal"
    assert hf.mask_pattern(sdpa(1, 17, q_offset=16), 1, 17) == "full"  # a decode step
    eager = eager_mask(batch_size=2, q_length=16, kv_length=16, dtype=torch.float32)
    assert hf.mask_pattern(eager, 16, 16) == "causal"
    padding = torch.ones(2, 16, dtype=torch.bool)
    padding[1, 0] = False
    assert hf.mask_pattern(sdpa(16, 16, attention_mask=padding), 16, 16) is None
    # chunked prefill with a cache: lower-right alignment, which is not SDPA's is_causal
    assert hf.mask_pattern(sdpa(4, 16, q_offset=12), 4, 16) is None
    assert hf.mask_pattern(eager + 0.5, 16, 16) is None  # a bias, not a mask


def test_a_causal_mask_takes_the_tuned_path_and_gives_its_result(models, fresh_seed):
    backend, ours, _, _ = models
    attention = ours.model.layers[0].self_attn
    gen = torch.Generator().manual_seed(fresh_seed)
    q = torch.randn(1, PROMPT, HEADS, HEAD_DIM, generator=gen).transpose(1, 2)
    k, v = torch.randn(2, 1, KV_HEADS, PROMPT, HEAD_DIM, generator=gen).unbind(0)
    mask = sdpa_mask(batch_size=1, q_length=PROMPT, kv_length=PROMPT, allow_is_causal_skip=False)
    scale = HEAD_DIM**-0.5
    backend.reset()
    with torch.no_grad():
        masked, _ = backend(attention, q, k, v, mask, scaling=scale)
        plain, _ = backend(attention, q, k, v, None, scaling=scale)
        wrong, _ = backend(attention, q, k, v, ~mask, scaling=scale)
    assert backend.tuned_calls == 2 and backend.counts[MASKED] == 1, backend.summary()
    torch.testing.assert_close(masked, plain, rtol=0, atol=0)
    assert masked.shape == (1, PROMPT, HEADS, HEAD_DIM) and masked.is_contiguous()
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scale, enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(masked, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        fallback, _ = sdpa_attention_forward(attention, q, k, v, ~mask, scaling=scale)
    torch.testing.assert_close(wrong, fallback, rtol=0, atol=0, equal_nan=True)


def test_a_keep_sdpa_entry_runs_sdpa_and_says_why(exported, tmp_path, fresh_seed):
    """The export as the studies judged it, with the prefill entry's verdict keep SDPA: its
    calls take SDPA with the verdict as the reason, and no keep-SDPA entry is ever run."""
    out, _ = exported
    data = json.loads(out.read_text())
    prefill = f"B1-H{HEADS}kv{KV_HEADS}-S{PROMPT}-D{HEAD_DIM}-fp32-causal"
    (entry,) = data["entries"][prefill].values()
    entry.update(verdict="keep_sdpa", reason="a tie with SDPA", variant="sdpa")
    path = tmp_path / "keep.json"
    path.write_text(json.dumps(data))
    backend = tuned.register_transformers(path, name="kernel_study_keep")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        LlamaConfig(**CONFIG), attn_implementation="kernel_study_keep"
    ).eval()
    gen = torch.Generator().manual_seed(fresh_seed)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, PROMPT), generator=gen)
    with torch.no_grad():
        model(ids)
    keep = f"sdpa: {prefill}: the study's verdict is to keep SDPA (a tie with SDPA)"
    assert dict(backend.counts) == {keep: LAYERS}, backend.summary()
    for per_device in json.loads(out.read_text())["entries"].values():
        for exported_entry in per_device.values():
            if exported_entry["verdict"] == "keep_sdpa":
                assert tuned.refusal(exported_entry), exported_entry


CLASH = textwrap.dedent("""
    import sys
    from kernels import hf, tuned
    try:
        tuned.register_transformers(sys.argv[1], name="clash")
    except hf.HubClash as exc:
        print("clash:", exc)
        raise SystemExit(3)
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.utils.import_utils import is_kernels_available
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="clash").eval()
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
    print("ran; hub kernels seen by transformers:", is_kernels_available())
""")


@pytest.mark.parametrize("hub_version", ["0.17.2", "0.18.5"])
def test_the_kernel_hubs_namesake_installed_beside_us(tmp_path, table, hub_version):
    """The hub's distribution metadata on the path, our `kernels` first: a hub release that
    transformers does not accept (0.17.2, the newest on PyPI as of transformers 5.24) leaves it
    alone and the model runs; one it accepts makes it import hub functions from our package,
    which `register_transformers` reports in one line."""
    site = tmp_path / "site"
    info = site / f"kernels-{hub_version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: kernels\nVersion: {hub_version}\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", CLASH, str(table)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if hub_version == "0.17.2":
        assert done.returncode == 0, done.stderr[-2000:]
        assert "ran; hub kernels seen by transformers: False" in done.stdout
    else:
        assert done.returncode == 3, done.stderr[-2000:]
        assert f"the kernel hub's package `kernels` ({hub_version} is installed)" in done.stdout
