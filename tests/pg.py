"""A throwaway PostgreSQL server for tests and benchmarks: installed if missing, on loopback.

`local_server()` finds the PostgreSQL binaries (installing the Debian/Ubuntu package with apt-get
when they are absent and we are root), runs `initdb` in a fresh temporary directory and starts the
server with `pg_ctl` on a free 127.0.0.1 port, trust authentication, no Unix socket outside the data
directory. PostgreSQL refuses to run as root: as root, the data directory belongs to the `postgres`
user and the server runs as that user (`runuser`, else `su`). The server is stopped and its
directory removed on exit.

`KERNEL_STUDY_TEST_PG_URL=postgresql+psycopg://...` uses an existing server instead (its user may
create databases). `PgUnavailable` says why no server could be had (tests skip with it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ENV_URL = "KERNEL_STUDY_TEST_PG_URL"


class PgUnavailable(Exception):
    """No PostgreSQL server can be had here (the reason is the message)."""


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def _install() -> None:
    if os.geteuid() != 0:
        raise PgUnavailable("PostgreSQL is not installed and we are not root to apt-get it")
    if not shutil.which("apt-get"):
        raise PgUnavailable("PostgreSQL is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise PgUnavailable(f"`{' '.join(cmd)}` failed: {tail}")


def binaries() -> Path:
    """The directory with initdb and pg_ctl, installing PostgreSQL where needed and allowed."""
    bindir = _bindir()
    if bindir is None:
        _install()
        bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        raise PgUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found after installing")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    import shlex

    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "postgres"], check=True, timeout=60
        )
        return pwd.getpwnam("postgres")


def _run(cmd: list[str], timeout: float = 120) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise PgUnavailable(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()}")


class Server:
    """A running server: `url(db)` names a database on it, `create_db()` makes a fresh one."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")  # postgresql+psycopg://user@host:port

    def url(self, db: str) -> str:
        return f"{self.base_url}/{db}"

    def create_db(self, prefix: str = "ks") -> str:
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        plain = self.url("postgres").replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def local_server(durable: bool = False) -> Iterator[Server]:
    """Yield a running Server; stop it and remove its files afterwards.

    `durable=False` (tests) turns fsync off; benchmarks keep PostgreSQL's durable defaults.
    """
    external = os.environ.get(ENV_URL)
    if external:
        yield Server(external.rsplit("/", 1)[0])
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailable("psycopg is not installed: pip install 'psycopg[binary]'") from None
    bindir = binaries()
    user = _server_user()
    # Not under pytest's tmp_path: that is mode 0700 and root's, unreadable to `postgres`.
    root = Path(tempfile.mkdtemp(prefix="kernel-study-pg-"))
    data = root / "data"
    data.mkdir()
    if user is not None:
        os.chmod(root, 0o755)
        for path in (root, data):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = _free_port()
    log = root / "server.log"
    started = False
    try:
        _run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        )
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} "
            "-c max_connections=200"
        )
        if not durable:
            options += " -c fsync=off"
        _run(
            _as_server_user(
                [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w"]
                + ["-t", "60", "start"]
            )
        )
        started = True
        server = Server(f"postgresql+psycopg://postgres@127.0.0.1:{port}")
        _wait_ready(server)
        yield server
    except PgUnavailable as exc:
        tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
        raise PgUnavailable(f"{exc} {tail}".strip()) from None
    finally:
        if started:
            subprocess.run(
                _as_server_user(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: Server, timeout_s: float = 30) -> None:
    import psycopg

    plain = server.url("postgres").replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(plain, connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise PgUnavailable(f"the server did not accept connections: {exc}") from None
            time.sleep(0.2)
