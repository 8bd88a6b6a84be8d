"""The config schema (Hydra ConfigStore dataclasses), composition, one-line validation errors,
and the problem a config describes (`problem_from`).

We compose with Hydra's compose API instead of `@hydra.main` so that every user mistake (an
unknown group option, an unknown key, a bad value) becomes one line and a non-zero exit before
any storage is touched. Override grammar, config groups and `-m` sweeps work as in Hydra.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from study.errors import UserError, one_line
from study.storage import DEFAULT_STORAGE

if TYPE_CHECKING:
    from kernels import Problem

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("problem", "space", "sampler", "storage", "bench")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


class ConfigError(UserError):
    """A user's configuration mistake: the message is the one line we print."""


@dataclass
class ProblemConfig:
    name: str = "custom"
    batch: int = 1
    heads_q: int = 8
    heads_kv: int = 8
    seq_q: int = 512
    seq_kv: int = 512
    head_dim: int = 64
    dtype: str = "float16"
    causal: bool = False
    scale: float | None = None


@dataclass
class SpaceConfig:
    name: str = "custom"
    variants: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    exclude_tags: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    # Free-form (not struct): `space.params={chunked:{chunk:[64]}}` or
    # `+space.params.chunked.chunk=[64]`; checked against the registry by study/space.py.
    params: Any = field(default_factory=dict)
    mutations: Any = field(default_factory=dict)


@dataclass
class SamplerConfig:
    name: str = "ga"  # = study.search.DEFAULT_SAMPLER and conf/config.yaml (tested)
    n_startup_trials: int | None = None
    popsize: int | None = None
    population_size: int | None = None
    mutation_prob: float | None = None
    crossover_prob: float | None = None
    offspring: int | None = None


@dataclass
class StorageConfig:
    url: str = DEFAULT_STORAGE
    heartbeat_s: int | None = None


@dataclass
class BenchConfig:
    check_sets: int = 3
    warmup: int = 3
    buffers: int = 3
    min_reps: int = 10
    max_reps: int = 200
    target_spread: float = 0.03
    time_cap_s: float = 4.0
    cache: str = "auto"
    b2b_blocks: int = 4
    timing: str = "auto"


@dataclass
class StudyConfig:
    name: str | None = None
    n_trials: int = 30
    timeout_s: float | None = None
    top_k: int = 5
    retime_top_k: int = 3
    retime_rounds: int = 3
    allow_env_change: bool = False
    patience: int | None = None  # stop after this many trials without improvement


@dataclass
class WorkerConfig:
    timeout_s: float = 120.0
    # added to timeout_s for variants tagged "compile" (their build runs torch.compile)
    build_timeout_s: float = 900.0
    devices: Any = "auto"
    # address-space cap of a CPU worker, GB; null: 75% of RAM on the CPU, none on a GPU; 0: none
    memory_limit_gb: float | None = None
    # auto: candidates run in bubblewrap's read-only sandbox where it works; off: never
    sandbox: str = "auto"
    # folders candidate processes may write (never the storage, run folder or key store)
    writable: list[str] = field(default_factory=list)


@dataclass
class Config:
    problem: ProblemConfig = field(default_factory=ProblemConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    device: str = "auto"
    seed: int = 0


def _register_schema() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)


_register_schema()


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _explain_compose_error(exc: BaseException, overrides: list[str]) -> str:
    text = str(exc)
    for group in GROUPS:
        if f"Could not find '{group}/" in text:
            chosen = next(
                (o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == group), "?"
            )
            return (
                f"{group}={chosen} is not a known option; choose one of: "
                f"{', '.join(group_options(group))}"
            )
    cause = exc.__cause__
    if cause is not None:
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        full_key = next(
            (ln.split(":", 1)[1].strip() for ln in str(cause).splitlines() if "full_key" in ln), ""
        )
        if "not in '" in detail:
            return f"unknown config key '{full_key or detail}' (valid keys: see study/config.py)"
        if "is not in struct" in detail and full_key.startswith(
            ("space.params", "space.mutations")
        ):
            return f"'{full_key}' is a new entry: write +{full_key}=... to add it"
        if full_key:
            return f"bad value for {full_key}: {detail}"
        return f"{text.splitlines()[0]}: {detail}"
    return one_line(exc, lines=2)


def _check_known_keys(cfg: DictConfig) -> None:
    """`+key=...` can add keys the schema does not know: refuse them too."""
    schema = OmegaConf.structured(Config)
    for section in cfg:
        if section not in schema:
            raise ConfigError(f"unknown config key '{section}' (valid keys: see study/config.py)")
        node, reference = cfg[section], schema[section]
        if isinstance(node, DictConfig) and isinstance(reference, DictConfig):
            for key in node:
                if key not in reference and section not in ("space",):
                    raise ConfigError(f"unknown config key '{section}.{key}'")


def compose_config(overrides: list[str]) -> DictConfig:
    """Compose `conf/config.yaml` with Hydra overrides; raise ConfigError with one line."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except Exception as exc:  # Hydra/OmegaConf raise many types; all are user mistakes here
        raise ConfigError(_explain_compose_error(exc, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """`-m problem=a,b` -> one override list per combination (cartesian product)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:
        raise ConfigError(f"cannot parse overrides: {one_line(exc, lines=2)}") from None
    axes: list[list[str]] = []
    for item in parsed:
        if item.is_sweep_override():
            values = [str(v) for v in item.sweep_string_iterator()]
            axes.append([f"{item.get_key_element()}={v}" for v in values])
        else:
            axes.append([item.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def resolve_device(requested: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; validates the name."""
    import torch

    req = str(requested).strip()
    if req == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return "cpu"
    if req == "cuda" or (req.startswith("cuda:") and req[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={req} but no CUDA device is visible; use device=auto or cpu")
        index = int(req[5:]) if ":" in req else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={req} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return f"cuda:{index}"
    raise ConfigError(f"device={req} is not valid; use {DEVICE_HELP}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express."""
    from kernels import DTYPES_NAMES
    from study.search import option_error

    p = cfg.problem
    for key in ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim"):
        _check(p[key] >= 1, f"problem.{key} must be >= 1, got {p[key]}")
    _check(
        p.heads_q % p.heads_kv == 0,
        f"problem.heads_q ({p.heads_q}) must be a multiple of problem.heads_kv ({p.heads_kv})",
    )
    _check(
        p.dtype in DTYPES_NAMES,
        f"problem.dtype={p.dtype} is not valid; choose one of: {', '.join(DTYPES_NAMES)}",
    )
    _check(p.scale is None or p.scale > 0, f"problem.scale must be > 0, got {p.scale}")
    s = cfg.study
    _check(s.n_trials >= 1, f"study.n_trials must be >= 1, got {s.n_trials}")
    _check(
        s.timeout_s is None or s.timeout_s > 0, f"study.timeout_s must be > 0, got {s.timeout_s}"
    )
    _check(s.top_k >= 1, f"study.top_k must be >= 1, got {s.top_k}")
    _check(s.retime_top_k >= 0, f"study.retime_top_k must be >= 0, got {s.retime_top_k}")
    _check(s.retime_rounds >= 1, f"study.retime_rounds must be >= 1, got {s.retime_rounds}")
    _check(s.patience is None or s.patience >= 1, f"study.patience must be >= 1, got {s.patience}")
    _check(cfg.worker.timeout_s > 0, f"worker.timeout_s must be > 0, got {cfg.worker.timeout_s}")
    _check(
        cfg.worker.build_timeout_s >= 0,
        f"worker.build_timeout_s must be >= 0, got {cfg.worker.build_timeout_s}",
    )
    _check(
        cfg.worker.sandbox in ("auto", "off"),
        f"worker.sandbox={cfg.worker.sandbox} is not valid; choose one of: auto, off",
    )
    b = cfg.bench
    _check(b.check_sets >= 1, f"bench.check_sets must be >= 1, got {b.check_sets}")
    _check(b.warmup >= 0, f"bench.warmup must be >= 0, got {b.warmup}")
    _check(b.buffers >= 1, f"bench.buffers must be >= 1, got {b.buffers}")
    _check(b.min_reps >= 1, f"bench.min_reps must be >= 1, got {b.min_reps}")
    _check(
        b.max_reps >= b.min_reps,
        f"bench.max_reps ({b.max_reps}) must be >= bench.min_reps ({b.min_reps})",
    )
    _check(b.target_spread > 0, f"bench.target_spread must be > 0, got {b.target_spread}")
    _check(b.time_cap_s > 0, f"bench.time_cap_s must be > 0, got {b.time_cap_s}")
    _check(
        b.cache in ("auto", "cold", "hot"),
        f"bench.cache={b.cache} is not valid; choose one of: auto, cold, hot",
    )
    _check(b.b2b_blocks >= 0, f"bench.b2b_blocks must be >= 0, got {b.b2b_blocks}")
    _check(
        b.timing in ("auto", "per_call", "back_to_back"),
        f"bench.timing={b.timing} is not valid; choose one of: auto, per_call, back_to_back",
    )
    _check(
        cfg.sampler.name in group_options("sampler"),
        f"sampler.name={cfg.sampler.name} is not valid; choose one of: "
        f"{', '.join(o for o in group_options('sampler'))}",
    )
    reason = option_error(cfg.sampler)
    _check(reason is None, str(reason))
    url = str(cfg.storage.url)
    _check("://" in url, f"storage.url={url} is not a database URL (e.g. sqlite:///file.db)")


def _with_auto_resolved(overrides: list[str], device: str) -> list[str]:
    """Replace `problem=auto` / `space=auto` (the defaults) by the device's choice.

    Done before composing, so that overrides of keys inside the chosen group apply to it.
    """
    auto = {
        "problem": "small_cpu" if device == "cpu" else "small",
        "space": "cpu" if device == "cpu" else "full",
    }
    result = list(overrides)
    for group, choice in auto.items():
        chosen = [o for o in overrides if o.split("=", 1)[0] == group]
        if not chosen:
            result.insert(0, f"{group}={choice}")
        elif chosen[-1].split("=", 1)[1] == "auto":
            result = [f"{group}={choice}" if o in chosen else o for o in result]
    return result


def load(overrides: list[str]) -> tuple[DictConfig, str]:
    """Resolve the device and the `auto` choices, compose, validate. Returns (cfg, device)."""
    requested = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "device"]
    device = resolve_device(requested[-1] if requested else "auto")
    cfg = compose_config(_with_auto_resolved(overrides, device))
    _check_known_keys(cfg)
    validate(cfg)
    return cfg, device


def problem_from(cfg: DictConfig, device: str) -> Problem:
    """The config's `problem` section on `device` (the device `load` resolved, or a worker's)."""
    from kernels import Problem

    p = cfg.problem
    return Problem(
        batch=p.batch,
        heads_q=p.heads_q,
        heads_kv=p.heads_kv,
        seq_q=p.seq_q,
        seq_kv=p.seq_kv,
        head_dim=p.head_dim,
        dtype=p.dtype,
        causal=p.causal,
        scale=p.scale,
        device=device,
        name=p.name,
    )


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
