"""Hostile candidates (tests/hostile/, one file per cheat in ANCHORS.md) through real studies.

Every hostile variant runs as one trial of one grid study, beside an honest control: each must
end PRUNED with the exact `rejected_by` of the check that catches its class of cheat, the honest
one COMPLETE, and the study must be unharmed (exact trial counts; the honest candidate measured
after the hostile ones still passes, so every patch and flag was restored).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import TINY, load_only_study, run_study

HOSTILE = Path(__file__).resolve().parent.parent / "hostile"

# variant -> the rejected_by it must end with (PRUNED), or the set of those it may end with
# where the check that catches it depends on something no test controls:
# hostile_freed_memory returns torch.empty: uninitialised memory. The gate poisons the free
# blocks of the output's size with NaN first, so stale answers cannot pass, but which block the
# CPU allocator hands out is glibc's choice (torch allocates with posix_memalign, which does not
# take the most recently freed block first): a poisoned one fails the NaN check, fresh zeroed
# pages or another tensor's old values fail the error bound. Both are the value checks; what is
# guaranteed, and asserted, is that it never passes them (issue #20: "nan" alone failed a
# fresh-clone run with "tolerance").
EXPECTED: dict[str, str | frozenset[str]] = {
    "hostile_freed_memory": frozenset({"nan", "tolerance"}),
    "hostile_constant": "tolerance",
    "hostile_mean_of_v": "tolerance",
    "hostile_write_inputs": "inputs_modified",
    "hostile_cache_by_pointer": "cached_output",
    "hostile_cache_by_id": "cached_output",
    "hostile_cache_by_shape": "cached_output",
    "hostile_cache_after_gate": "timed_output",
    "hostile_batch_first": "timed_output",
    "hostile_side_thread": "output_late",
    "hostile_lazy_tensor": "type",
    "hostile_patch_perf_counter": "timer_patched",
    "hostile_patch_cuda_event": "timer_patched",
    "hostile_patch_timer_in_build": "timer_patched",
    "hostile_patch_private_clock": "timer_patched",
    "hostile_low_precision": "tolerance",
    "hostile_drop_tail_keys": "tolerance",
    "hostile_drop_middle_block": "tolerance",
    "hostile_no_tail_mask": "tolerance",
    "hostile_no_max_subtraction": "nan",
    "hostile_broadcast_stride": "stride",
    "hostile_wrong_shape": "shape",
    "hostile_wrong_dtype": "dtype",
    "hostile_not_a_tensor": "type",
    "hostile_persistent_output": "output_aliased",
    "hostile_state_threads": "global_state",
    "hostile_state_flush_denormal": "global_state",
    "hostile_state_sdpa_flash_off": "global_state",
    "hostile_state_matmul_precision": "global_state",
    "hostile_state_default_dtype": "global_state",
    "hostile_state_function_mode": "global_state",
    "hostile_patch_sdpa": "baseline_patched",
    "hostile_patch_sdpa_call": "baseline_patched",
    "hostile_patch_checker": "harness_patched",
    "hostile_detects_gate": "timed_output",
    "hostile_state_late_thread": "global_state",
}
HONEST = ["hostile_control_honest", "plain"]


def allowed(variant: str) -> set[str]:
    """The rejected_by values `variant` may end with (EXPECTED's note says when more than one)."""
    check = EXPECTED[variant]
    return set(check) if isinstance(check, frozenset) else {check}


def _plugins(gpu: bool = False) -> list[str]:
    return sorted(
        str(p)
        for p in HOSTILE.glob("*.py")
        if not p.name.startswith("_") and p.name.startswith("gpu_") == gpu
    )


def _grid_study(tmp_path: Path, plugins: list[str], variants: list[str], *extra: str):
    return run_study(
        tmp_path,
        *TINY,
        f"space.plugins=[{','.join(plugins)}]",
        f"space.variants=[{','.join(variants)}]",
        "space.mutations.layout=[bhsd]",
        "space.mutations.threads=[0]",
        "sampler=grid",
        f"study.n_trials={len(variants)}",
        *extra,
    )


def test_every_hostile_candidate_is_caught_beside_an_honest_one(tmp_path):
    variants = list(EXPECTED) + HONEST
    proc = _grid_study(tmp_path, _plugins(), variants)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load_only_study(tmp_path)
    assert len(study.trials) == len(variants)
    by_variant = {t.user_attrs["variant"]: t for t in study.trials}
    assert set(by_variant) == set(variants)
    wrong = {}
    for name in EXPECTED:
        trial = by_variant[name]
        got = (trial.state.name, trial.user_attrs.get("rejected_by"), trial.user_attrs.get("error"))
        if got[0] != "PRUNED" or got[1] not in allowed(name):
            wrong[name] = got
    assert not wrong, wrong
    for name in HONEST:
        trial = by_variant[name]
        assert trial.state == TrialState.COMPLETE, (name, trial.user_attrs)
        assert trial.user_attrs["spot_checks"] >= 1
        assert trial.user_attrs["gate_sets"] >= 7
    # the winner is an honest candidate, re-timed, and nothing hostile reached the report
    assert "hostile_" not in proc.stdout.replace("hostile_control_honest", "")


def test_hostile_file_per_cheat_is_covered():
    """Every registered hostile variant (CPU files) has an expectation here, and vice versa."""
    import kernels

    names = set()
    for path in _plugins():
        names |= set(kernels.load_plugin(path))
    assert names - set(HONEST) == set(EXPECTED)


@pytest.mark.gpu
def test_side_stream_is_caught_on_a_gpu(tmp_path):
    variants = ["hostile_gpu_side_stream", "hostile_control_honest", "hostile_patch_cuda_event"]
    proc = _grid_study(
        tmp_path,
        _plugins(gpu=True) + [str(HOSTILE / "honest.py"), str(HOSTILE / "patch_timer.py")],
        variants,
        "device=cuda",
        "problem=small",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_variant = {t.user_attrs["variant"]: t for t in load_only_study(tmp_path).trials}
    assert by_variant["hostile_gpu_side_stream"].user_attrs["rejected_by"] in (
        "output_late",
        "nan",
    )
    assert by_variant["hostile_patch_cuda_event"].user_attrs["rejected_by"] == "timer_patched"
    assert by_variant["hostile_control_honest"].state == TrialState.COMPLETE
