"""`python -m study.dashboard [storage.url=...] [port=N] [host=...] [artifacts=DIR]`.

optuna-dashboard on the configured storage (default `sqlite:///outputs/studies.db`), bound to
127.0.0.1 unless `host=` says otherwise, with the run logs of failed and pruned trials served
from the artifact store (default: `artifacts/` beside a SQLite file, else `outputs/artifacts`).
What a run publishes for it (the study's note, the trials' logs) is study/results/publish.py.
Ctrl-C stops the server: exit status 0, the normal end.
"""

from __future__ import annotations

import logging
import socketserver
import sys
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from study import cli
from study.errors import UserError
from study.results.publish import DEFAULT_ARTIFACTS, artifact_store, artifacts_dir_for
from study.storage import DEFAULT_STORAGE, open_storage

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
USAGE = (
    "usage: python -m study.dashboard [storage.url=URL] [port=N] [host=ADDR] [artifacts=DIR]\n"
    f"  defaults: storage.url={DEFAULT_STORAGE} host={DEFAULT_HOST} port={DEFAULT_PORT}\n"
    "  artifacts (trial logs): artifacts/ beside a SQLite file, else outputs/artifacts"
)
KEYS = ("storage.url", "port", "host", "artifacts")


def app(storage: str | optuna.storages.BaseStorage, artifacts: Path | str = DEFAULT_ARTIFACTS):
    """The dashboard's WSGI application (what the server runs; tests call it directly)."""
    import optuna_dashboard

    return optuna_dashboard.wsgi(storage, artifact_store=artifact_store(artifacts))


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - wsgiref's signature
        log.debug(format, *args)


def parse(args: list[str]) -> dict[str, Any]:
    """The command line -> {storage.url, host, port, artifacts}, checked."""
    given, _ = cli.options(args, KEYS, USAGE)
    opts: dict[str, Any] = {
        "storage.url": DEFAULT_STORAGE,
        "host": DEFAULT_HOST,
        "port": DEFAULT_PORT,
        "artifacts": None,
    } | given
    try:
        opts["port"] = int(opts["port"])
    except ValueError:
        raise UserError(f"port={opts['port']} is not a number") from None
    if not 0 <= opts["port"] < 65536:
        raise UserError(f"port={opts['port']} is out of range")
    url = str(opts["storage.url"])
    opts["artifacts"] = opts["artifacts"] or str(artifacts_dir_for(url))
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UserError(f"no study database at {path}: run `python -m study.run` first")
    return opts


@cli.command(USAGE)
def main(args: list[str]) -> int:
    opts = parse(args)
    storage = open_storage(str(opts["storage.url"]))
    try:
        server = make_server(
            opts["host"],
            opts["port"],
            app(storage, opts["artifacts"]),
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
    except OSError as exc:  # the port is taken, the host is not this one, artifacts unwritable
        raise UserError(str(exc)) from None
    host, port = server.server_address[:2]
    print(f"optuna-dashboard on {opts['storage.url']}: http://{host}:{port}/dashboard/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
