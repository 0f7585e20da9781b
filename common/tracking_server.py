"""A shared MLflow tracking server on PostgreSQL, for runs of several processes and nodes.

SQLite is the embedded default for one machine. Several writers at once (the ranks' hosts of a
multi-node training, Spark drivers, a report) want a server: ``make tracking-server`` runs
Debian's PostgreSQL 15 (its binaries, started by the project as the current user, or as
``postgres`` when run as root, which initdb refuses) with its data under ``outputs/tracking/``,
and ``mlflow server`` on it with an artifact root beside it. Both bind 127.0.0.1 unless told
otherwise (``--host 0.0.0.0`` for other nodes, behind your own network rules).

    python -m common.tracking_server start [--dir outputs/tracking] [--port 5001] [--pg-port 5433]
    python -m common.tracking_server stop  [--dir outputs/tracking]

``start`` prints the ``MLFLOW_TRACKING_URI`` to export; the state (ports, pids, logs) lives in the
folder, so ``stop`` finds what ``start`` started. Starting again reuses the database.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

STATE_FILE = "server.json"
DATABASE = "mlflow"


class ServerError(RuntimeError):
    """The server cannot start as asked; the message says what to install or change."""


@dataclass
class TrackingServer:
    uri: str                  # http://HOST:PORT, what MLFLOW_TRACKING_URI should say
    backend: str              # postgresql://...
    artifacts: str            # the artifact root (a folder here; s3://... works the same)
    mlflow_pid: int
    pg_data: str
    pg_port: int
    state_dir: str


def pg_bin(explicit: Optional[str] = None) -> Path:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl): ``PG_BIN``, or Debian's newest."""
    candidates = [explicit or os.environ.get("PG_BIN", "")] + sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                                       key=lambda p: int(Path(p).parent.name),
                                                                       reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise ServerError("PostgreSQL's server binaries (initdb, pg_ctl) not found: apt-get install postgresql "
                      "(Debian), or set PG_BIN to the folder that holds them")


def _as_owner(cmd: list[str], owner: Optional[str]) -> list[str]:
    return ["runuser", "-u", owner, "--", *cmd] if owner else cmd


def _owner() -> Optional[str]:
    """Who runs PostgreSQL: this user, or ``postgres`` when this is root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("running as root, and there is no 'postgres' user to run PostgreSQL as "
                          "(initdb refuses root): create one, or start the server as another user") from None
    return "postgres"


def _run(cmd: list[str], what: str, log: Path) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise ServerError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]} "
                          f"(log: {log})")


def start_postgres(state: Path, port: int, bindir: Path) -> Path:
    """Initialise (once) and start a PostgreSQL cluster in ``state/pg``, trusting loopback only,
    with the ``mlflow`` database. Returns its data folder."""
    data, sockets, log = state / "pg", state / "pg-sockets", state / "postgres.log"
    owner = _owner()
    sockets.mkdir(parents=True, exist_ok=True)
    if owner:
        for p in (state, sockets):
            shutil.chown(p, owner)
        if subprocess.run(_as_owner(["test", "-x", str(state)], owner)).returncode != 0:
            raise ServerError(f"PostgreSQL runs as the '{owner}' user (initdb refuses root), who cannot enter {state}: "
                              "use a --dir whose parent folders others may enter (chmod o+x), e.g. under /srv")
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if owner:
            shutil.chown(data, owner)
        _run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8"],
                       owner), "initdb", log)
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    _run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(state / "postgres-server.log"), "-o",
                    options, "-w", "-t", "60", "start"], owner), "pg_ctl start", log)
    psql = str(bindir / "psql") if (bindir / "psql").exists() else "psql"
    exists = subprocess.run(_as_owner([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "-d", "postgres", "-tAc",
                                       f"SELECT 1 FROM pg_database WHERE datname='{DATABASE}'"], owner),
                            capture_output=True, text=True)
    if exists.stdout.strip() != "1":
        _run(_as_owner([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", DATABASE],
                       owner), "createdb", log)
    return data


def _wait_http(url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"mlflow server exited ({proc.returncode}): see {log}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer {url}/health within {deadline_s:.0f} s: see {log}")


def start(state_dir: str | Path, port: int = 5001, pg_port: int = 5433, host: str = "127.0.0.1",
          artifacts: Optional[str] = None, workers: int = 2, bindir: Optional[str] = None) -> TrackingServer:
    """PostgreSQL and ``mlflow server`` on it; returns where they are (also in ``state_dir``)."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if (state / STATE_FILE).exists():
        raise ServerError(f"{state / STATE_FILE} exists: a server is running from {state} (stop it first: "
                          f"python -m common.tracking_server stop --dir {state_dir})")
    data = start_postgres(state, pg_port, pg_bin(bindir))
    backend = f"postgresql+psycopg://mlflow@127.0.0.1:{pg_port}/{DATABASE}"
    root = artifacts or str(state / "artifacts")
    log = state / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                             "--artifacts-destination", root, "--serve-artifacts", "--host", host, "--port", str(port),
                             "--workers", str(workers)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    server = TrackingServer(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", backend, root,
                            proc.pid, str(data), pg_port, str(state))
    (state / STATE_FILE).write_text(json.dumps(asdict(server), indent=2))
    try:
        _wait_http(server.uri, proc, log)
    except ServerError:
        stop(state)
        raise
    return server


def stop(state_dir: str | Path, bindir: Optional[str] = None) -> bool:
    """Stop what :func:`start` started from ``state_dir`` (the mlflow server's process group, then
    PostgreSQL, fast shutdown). False when nothing was running."""
    state = Path(state_dir).resolve()
    path = state / STATE_FILE
    if not path.exists():
        return False
    server = TrackingServer(**json.loads(path.read_text()))
    try:
        os.killpg(server.mlflow_pid, signal.SIGTERM)
        for _ in range(100):
            os.killpg(server.mlflow_pid, 0)
            time.sleep(0.1)
        os.killpg(server.mlflow_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _run(_as_owner([str(pg_bin(bindir) / "pg_ctl"), "-D", server.pg_data, "-m", "fast", "-w", "stop"], _owner()),
         "pg_ctl stop", state / "postgres.log")
    path.unlink()
    return True


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start")
    down = sub.add_parser("stop")
    for s in (up, down):
        s.add_argument("--dir", default="outputs/tracking", help="where the database, artifacts, pids and logs live")
    up.add_argument("--port", type=int, default=5001)
    up.add_argument("--pg-port", type=int, default=5433)
    up.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other nodes")
    up.add_argument("--artifacts", default=None, help="artifact root (default: <dir>/artifacts)")
    args = p.parse_args(argv)
    try:
        if args.command == "start":
            server = start(args.dir, args.port, args.pg_port, args.host, args.artifacts)
            print(f"MLflow tracking server on PostgreSQL: {server.uri} (database {server.backend}, artifacts "
                  f"{server.artifacts})\nexport MLFLOW_TRACKING_URI={server.uri}")
        else:
            print("stopped" if stop(args.dir) else f"no server running from {args.dir}")
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
