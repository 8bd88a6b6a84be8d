"""The registry read as data in a child process (study/registration.py), against references that
do not go through it: the worker's own `supports` answers, and `valid` called in this process on
the built-ins (trusted code); plugins' mistakes and noise at import are one-line PluginErrors."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest

import kernels
from kernels import PluginError, Problem
from study import registration
from study.measure.worker import Worker

CPU = Problem(batch=1, heads_q=4, heads_kv=2, seq_q=96, seq_kv=96, head_dim=16, dtype="float32")

NOISY = textwrap.dedent("""
    import os, sys
    from kernels import plain_attention, register
    print("{not json", flush=True)            # noise on stdout at import
    os.write(1, b"]]]")                       # and below Python's sys.stdout
    print("to stderr", file=sys.stderr)

    def valid(problem, block, flag):
        if block > problem.seq_q:
            return f"block {block} > seq {problem.seq_q}"
        if flag == "boom":
            raise RuntimeError("valid() itself failed")
        return None

    @register("noisy", params={"block": [32, 64, 128], "flag": ["a", "boom"]}, valid=valid,
              supports=lambda p: None if p.heads_q > 1 else "needs heads", tags=("mine",))
    def build(problem, block, flag):
        return lambda q, k, v: plain_attention(q, k, v, problem.causal, problem.scale)
""")


def test_answers_match_the_workers_and_valid_matches_the_builtins(tmp_path: Path) -> None:
    plugin = tmp_path / "noisy.py"
    plugin.write_text(NOISY)
    small = Problem(batch=1, heads_q=1, heads_kv=1, seq_q=64, seq_kv=64, head_dim=16)
    data = registration.read([str(plugin)], [CPU, small], {"noisy": {"block": [128, 32]}})
    worker = Worker("cpu", [str(plugin)], tmp_path / "worker.log")
    try:
        for problem in (CPU, small):
            ask = {"problem": problem.to_dict(), "names": list(data)}
            reply = worker.call("supports", ask, 300)
            assert reply["status"] == "ok", reply
            assert {n: v.supports(problem) for n, v in data.items()} == reply["answers"]
    finally:
        worker.stop()
    # the built-ins only: an earlier test in this process may have loaded plugins
    # (tests/measure/test_hostile.py), and the child registers just the built-ins and `noisy`
    builtins = {
        n: v for n, v in kernels.variants().items() if v.source.startswith("kernels.builtin.")
    }
    assert set(data) == set(builtins) | {"noisy"}
    for name, variant in builtins.items():
        info = data[name]
        assert info.params == variant.params and info.tags == variant.tags
        assert info.source == variant.source and info.plugin is None
        for problem in (CPU, small):
            if info.supports(problem):
                continue
            names = list(variant.params)
            for combo in itertools.product(*variant.params.values()):
                params = dict(zip(names, combo, strict=True))
                assert info.valid(problem, params) == variant.valid(problem, params), (name, params)
    noisy = data["noisy"]
    assert noisy.plugin == str(plugin) and noisy.tags == ("mine",)
    assert noisy.params == {"block": [32, 64, 128], "flag": ["a", "boom"]}
    assert noisy.asked == {"block": [128, 32], "flag": ["a", "boom"]}  # space.params narrowed it
    assert noisy.supports(small) == "needs heads"
    assert noisy.valid(CPU, {"block": 128, "flag": "a"}) == "block 128 > seq 96"
    assert noisy.valid(CPU, {"block": 32, "flag": "a"}) is None
    assert noisy.valid(CPU, {"block": 32, "flag": "boom"}) == (
        "valid() raised RuntimeError: valid() itself failed"
    )
    assert noisy.valid_error(CPU, {"block": 32, "flag": "boom"}) == (
        "RuntimeError: valid() itself failed"
    )
    assert noisy.valid_error(CPU, {"block": 128, "flag": "a"}) is None
    with pytest.raises(LookupError, match="not asked about block=64"):
        noisy.valid(CPU, {"block": 64, "flag": "a"})
    other = Problem(batch=2, heads_q=4, heads_kv=2, seq_q=96, seq_kv=96, head_dim=16)
    with pytest.raises(LookupError, match="not read for"):
        noisy.supports(other)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "@register('odd', params={'tile': [(16, 16)]})\ndef build(problem, tile):\n    pass\n",
            "variant 'odd': param 'tile' has choice (16, 16); choices must be plain values",
        ),
        ("import os\nos._exit(3)\n", "reading the variants' registration failed (exited with "),
        ("raise ImportError('no such thing')\n", "failed to import: ImportError: no such thing"),
    ],
    ids=["tuple-choice", "exits-at-import", "raises-at-import"],
)
def test_a_plugins_mistake_is_one_line(tmp_path: Path, body: str, message: str) -> None:
    plugin = tmp_path / "bad.py"
    plugin.write_text("from kernels import register\n" + body)
    with pytest.raises(PluginError) as got:
        registration.read([str(plugin)], [CPU])
    assert message in str(got.value) and "\n" not in str(got.value), str(got.value)
