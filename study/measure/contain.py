"""Containment of the processes that run candidate code: they die with their trial, and they
cannot write the study's storage or run folder. Plain Linux mechanisms, not a kernel sandbox.

- The process tree. `spawn` starts a process in its own session (its own process group); the
  process that runs candidate code calls `set_subreaper()` (prctl PR_SET_CHILD_SUBREAPER), so
  that whatever the candidate forks, double-forks or daemonises is re-parented to it and stays
  in its subtree. `kill_tree` stops the root (a stopped process forks no more), SIGKILLs the
  subtree until it is empty, then the root; `Contained.kill` adds the process group.
- bubblewrap (`bwrap`, where it installs and can create namespaces here): the process sees the
  file system read-only (/ bound read-only; a private /dev whose /dev/shm is the only scratch
  space, TMPDIR; /dev/nvidia* bound in on a GPU; `Sandbox.writable` bound read-write on
  request), has its own PID namespace (when its first process exits the kernel kills every
  other one in it), no network (a storage server is out of reach) and `Sandbox.hidden`
  directories (the verdict keys, study/seal.py) replaced by empty ones. Where bwrap is missing
  or fails its probe, processes run without it and `Sandbox.warning()` says so in one line.

Not promised: a candidate process still runs as the study's user, can read what that user can
read outside the hidden directories, use the CPU and GPU as it likes, and exploit the kernel or
the driver. The environment a candidate gets (`candidate_env`) has the storage URL and anything
that looks like a credential removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PR_SET_CHILD_SUBREAPER = 36
CREDENTIAL_WORDS = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL")
BASE_ARGS = (
    "--ro-bind", "/", "/",
    "--dev", "/dev",
    "--proc", "/proc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--new-session",
)  # fmt: skip
SCRATCH = "/dev/shm"  # bwrap's private /dev has a private, writable /dev/shm
# The caches candidate code writes, all in the scratch space: the file system is read-only, and
# an inherited cache variable wins over TMPDIR (inductor sets TORCHINDUCTOR_CACHE_DIR in its own
# process's environment the first time it compiles, so every process started after that, a
# study's worker included, inherited /tmp/torchinductor_<user> and failed to create its locks
# there: every compiled variant FAILed in the full test suite and in a study started by a
# process that had compiled before).
SCRATCH_ENV = {
    "TMPDIR": SCRATCH,
    "TRITON_CACHE_DIR": f"{SCRATCH}/triton",
    "TORCHINDUCTOR_CACHE_DIR": f"{SCRATCH}/torchinductor",
    "CUDA_CACHE_PATH": f"{SCRATCH}/nv-compute-cache",
    "TORCH_EXTENSIONS_DIR": f"{SCRATCH}/torch_extensions",
    "XDG_CACHE_HOME": f"{SCRATCH}/cache",
}
GPU_NODES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")


@functools.cache
def bwrap_problem() -> str | None:
    """None where bwrap runs a read-only, PID-namespaced process here; else why it cannot."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        probe = subprocess.run(
            [exe, *BASE_ARGS, "true"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap did not run: {exc}"
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        return (
            f"bwrap cannot create its namespaces here ({lines[-1] if lines else probe.returncode})"
        )
    return None


@dataclass(frozen=True)
class Sandbox:
    """How candidate processes are started: `enabled` (bwrap where it works), the paths they
    may write (`writable`, bound read-write) and the directories hidden from them."""

    enabled: bool = True
    writable: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.enabled and bwrap_problem() is None

    def warning(self) -> str | None:
        """The one line to print when candidates run without the read-only sandbox."""
        if not self.enabled:
            return (
                "warning: worker.sandbox=off: candidate processes can write the study's storage "
                "and run folder (process-tree containment only)"
            )
        problem = bwrap_problem()
        if problem is None:
            return None
        return (
            f"warning: candidates are not sandboxed ({problem}): they can write the study's "
            "storage and run folder; only their process tree is contained"
        )

    def argv(self, gpu: bool = False) -> list[str]:
        """The bwrap prefix of a command line ([] where the sandbox is not active)."""
        if not self.active:
            return []
        args = [shutil.which("bwrap") or "bwrap", *BASE_ARGS]
        for name, value in SCRATCH_ENV.items():
            args += ["--setenv", name, value]
        if gpu:
            nodes = {node for pattern in GPU_NODES for node in glob.glob(pattern)}
            for node in sorted(nodes):
                args += ["--dev-bind", node, node]
        for path in self.writable:
            Path(path).mkdir(parents=True, exist_ok=True)
            real = str(Path(path).resolve())
            args += ["--bind", real, real]
        for path in self.hidden:
            if Path(path).is_dir():
                real = str(Path(path).resolve())
                args += ["--tmpfs", real]
        return args


def candidate_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) without the storage URL and anything named like a credential."""
    source = os.environ if env is None else env
    return {
        name: value
        for name, value in source.items()
        if not name.startswith("KERNEL_STUDY_")
        and not any(word in name.upper() for word in CREDENTIAL_WORDS)
    }


def set_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux; False elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, state letter, start time in clock ticks), read from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), fields[0], int(fields[19]))
    return table


def descendants(root: int, live_only: bool = True) -> list[int]:
    """Every process below `root` in the process tree (zombies left out unless asked)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return [p for p in found if not live_only or table[p][1] not in ("Z", "X")]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap_children() -> None:
    """Collect the zombies among this process's own children (adopted orphans included)."""
    me = os.getpid()
    for pid, (ppid, state, _) in _table().items():
        if ppid == me and state in ("Z", "X"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def kill_tree(
    root: int, include_root: bool = True, rounds: int = 200, spare: Collection[int] = ()
) -> int:
    """SIGKILL every process below `root` (and `root` itself when `include_root`) but `spare`
    (a process's own helpers: the judge's fork server and long-lived runners).

    The root is stopped first, so that it starts nothing while its subtree is emptied; a
    descendant that forks between two passes is caught by the next one (the orphans of a
    killed process land on the nearest subreaper, still inside the tree). Returns how many
    distinct descendants were signalled.
    """
    if include_root:
        _signal(root, signal.SIGSTOP)
    signalled: set[int] = set()
    for _ in range(rounds):
        alive = [pid for pid in descendants(root) if pid not in spare]
        if not alive:
            break
        for pid in alive:
            _signal(pid, signal.SIGKILL)
        signalled.update(alive)
        if root == os.getpid():
            _reap_children()
        time.sleep(0.005)
    if include_root:
        _signal(root, signal.SIGKILL)
    if root == os.getpid():
        _reap_children()
    return len(signalled)


def kill_descendants() -> int:
    """End every process this one started (a trial's leftovers); this one goes on."""
    return kill_tree(os.getpid(), include_root=False)


def exit_reason(code: int | None, sandboxed: bool) -> str:
    """A process's exit status in words; bwrap reports a child killed by signal N as 128+N."""
    if code is None:
        return "still running"
    if sandboxed and code > 128:
        code = -(code - 128)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Contained:
    """A process started by `spawn`: its own session, inside the sandbox where it is active."""

    def __init__(self, popen: subprocess.Popen[Any], sandboxed: bool) -> None:
        self.popen = popen
        self.sandboxed = sandboxed
        self.pid = popen.pid
        try:  # readable when the process has exited: a sentinel for connection.wait
            self.sentinel: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self.sentinel = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_reason(self) -> str:
        return exit_reason(self.popen.poll(), self.sandboxed)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the process, its whole subtree and its process group; reap it."""
        if self.popen.poll() is None:
            kill_tree(self.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait(10)
        if self.sentinel is not None:
            os.close(self.sentinel)
            self.sentinel = None


def spawn(
    argv: Sequence[str],
    sandbox: Sandbox,
    *,
    gpu: bool = False,
    pass_fds: Sequence[int] = (),
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Contained:
    """Start `argv` contained: a new session, `candidate_env(env)`, bwrap where active.

    `pass_fds` reach the process (bwrap passes them through); nothing else is inherited.
    """
    prefix = sandbox.argv(gpu)
    popen = subprocess.Popen(
        [*prefix, *argv],
        pass_fds=tuple(pass_fds),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=candidate_env(env),
        start_new_session=True,
        close_fds=True,
    )
    return Contained(popen, bool(prefix))
