"""The one wrapper of every command (`python -m study.<command> [key=value ...]`).

A command module defines its body, `(args) -> exit status`, and wraps it:

    @cli.command(USAGE, interrupted="interrupted: ...")
    def main(args: list[str]) -> int:
        opts, overrides = cli.options(args, KEYS, USAGE, overrides=True)
        s = cli.setup(overrides)              # config-backed commands
        ...                                   # call, then print
        return 0

and gets `main(argv=None) -> int`: `-h`/`--help` prints the usage and exits 0; logging, Optuna's
verbosity and the warning filters are set once here; an unknown `-option` and every `UserError`
(study/errors.py; also kernels' PluginError) print `error: <one line>` on stderr and exit 2,
never a traceback; Ctrl-C prints the command's own message and exits 130, and SIGTERM (what
`timeout`, SLURM preemption and `kill` send) takes the same path (the trial in flight ends FAIL
with its reason) and exits 143. Any other exception is a bug and keeps its traceback.

One override grammar. A command that composes the config (run, selfcheck, record) hands its
overrides to Hydra's compose (study/config.py), so groups, `+key=`, lists and `-m` sweeps mean
what they mean in Hydra. A command's own keys (export's `out=`, `study.name=`, `storage.url=`;
dashboard's `port=`; record's `rounds=`) are split off by `options` on the same surface:
`key=value`, an optional leading `+`, the last value of a key wins, lists as `[a,b]` or `a,b`
(`as_list`, quotes stripped). Their values are taken as written, not lexed by Hydra: a default
study name holds `#`, which Hydra's lexer refuses unquoted, and `study.name=<that name>` must
keep working.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from kernels import PluginError, Problem
from study.config import load, problem_from, to_container
from study.errors import Interrupted, UserError, signal_name

HELP = ("-h", "--help")
USER_ERRORS = (UserError, PluginError)
Body = Callable[[list[str]], int]
Main = Callable[..., int]


def configure_output(quiet: bool = False) -> None:
    """Warnings and above from our loggers, Optuna's errors only, no ExperimentalWarning.

    `quiet` ignores every Python warning (selfcheck: a library's deprecation notices would bury
    the table a person reads on a new machine).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if quiet:
        warnings.filterwarnings("ignore")


def command(
    usage: str,
    interrupted: str = "interrupted",
    flags: Sequence[str] = (),
    quiet: bool = False,
) -> Callable[[Body], Main]:
    """Wrap a command's body into its `main(argv=None)` (see the module docstring).

    `flags`: the `-options` the body reads itself (run's `-m`); any other is refused.
    """

    def wrap(body: Body) -> Main:
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            if any(a in HELP for a in args):
                print(usage)
                return 0
            configure_output(quiet)
            try:
                with _sigterm_interrupts():
                    unknown = [a for a in args if a.startswith("-") and a not in flags]
                    if unknown:
                        raise UserError(f"unknown option {unknown[0]}; {usage.splitlines()[0]}")
                    return body(args)
            except USER_ERRORS as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt as exc:
                name = signal_name(exc)
                print(interrupted + ("" if name == "SIGINT" else f" ({name})"), file=sys.stderr)
                return 128 + signal.Signals[name].value

        return main

    return wrap


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a command runs, SIGTERM raises `Interrupted` in the main thread, as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def options(
    args: list[str],
    keys: Sequence[str],
    usage: str,
    overrides: bool = False,
    prefixes: Sequence[str] = (),
) -> tuple[dict[str, str], list[str]]:
    """Split `args` into the command's own keys ({key: value as written}) and the rest.

    The command's keys are `keys` and any key that starts with one of `prefixes` (replay's
    `sampler.<option>`). The rest are Hydra overrides of the config when the command has one
    (`overrides`); without a config, any other argument is a user error.
    """
    own: dict[str, str] = {}
    rest: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("+")
        if sep and (key in keys or key.startswith(tuple(prefixes))):
            own[key] = value
        elif overrides:
            rest.append(arg)
        elif not sep:
            raise UserError(f"unknown argument {arg!r}: not key=value; {usage.splitlines()[0]}")
        else:
            raise UserError(f"unknown argument {arg!r} (unknown key); known: {', '.join(keys)}")
    return own, rest


def as_list(value: str) -> list[str]:
    """`[a,b]`, `a,b` or `a` -> the names, quotes stripped."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [v.strip().strip("'\"") for v in value.split(",") if v.strip()]


@dataclass(frozen=True)
class Setup:
    """What a config-backed command starts from: the config, its device, its problem there,
    and the user's plugin files (absolute paths; never imported in this process: workers and
    study/registration.py's child process import them)."""

    cfg: DictConfig
    device: str
    problem: Problem
    plugins: list[str]

    @property
    def bench(self) -> dict[str, Any]:
        return to_container(self.cfg.bench)


def plugin_paths(paths: Sequence[str]) -> list[str]:
    """The plugin files' absolute paths (what a worker loads); a missing one is a user error."""
    plugins = [str(Path(p).expanduser().resolve()) for p in paths]
    for given, path in zip(paths, plugins, strict=True):
        if not Path(path).is_file():
            raise PluginError(f"plugin file not found: {given}")
    return plugins


def setup(overrides: list[str]) -> Setup:
    """Compose and validate the config, find the plugins, build the problem on the device."""
    cfg, device = load(overrides)
    plugins = plugin_paths(cfg.space.plugins)
    return Setup(cfg, device, problem_from(cfg, device), plugins)
