"""What a user or a trial sees of a mistake: one line.

`UserError` is the base of every error that a command answers with `error: <message>` and exit
status 2 (study/cli.py): a bad override, a space that cannot be built, a storage that cannot be
opened. Its message is written for the user and is already one line. `one_line` turns a library's
exception (Hydra, OmegaConf, SQLAlchemy, a kernel's RuntimeError) into one line for such a
message or for a trial's `error` attr. No heavy imports: the worker process imports this too.
"""

from __future__ import annotations

# OmegaConf appends these context lines to its messages; they repeat what the first line says.
CONTEXT_LINES = ("full_key", "object_type", "reference_type")
LIMIT = 300  # characters: one terminal line's worth, and what a trial attr keeps


class UserError(Exception):
    """A user's mistake: the message is the one line the command prints (exit status 2)."""


def one_line(exc: BaseException, lines: int | None = 1, typed: bool = False) -> str:
    """`exc` as one line of at most LIMIT characters.

    Its first `lines` non-empty lines (None: all of them), whitespace collapsed, OmegaConf's
    context lines left out, joined by "; ". `typed` puts the exception's type name first (a
    trial's `error` attr: RuntimeError and ValueError mean different things); an exception
    without a message is its type name.
    """
    kept = [" ".join(ln.split()) for ln in str(exc).splitlines()]
    kept = [ln for ln in kept if ln and not ln.startswith(CONTEXT_LINES)]
    text = "; ".join(kept if lines is None else kept[:lines])
    if typed:
        text = f"{type(exc).__name__}: {text}"
    return (text or type(exc).__name__)[:LIMIT]


class Interrupted(KeyboardInterrupt):
    """A signal that stops a command as Ctrl-C does (SIGTERM: `timeout`, SLURM, `kill`); it
    travels the KeyboardInterrupt paths, so the trial in flight ends FAIL with a reason."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def signal_name(exc: BaseException) -> str:
    """Which signal a KeyboardInterrupt stands for: Ctrl-C's SIGINT unless it says otherwise."""
    return getattr(exc, "signal_name", "SIGINT")
