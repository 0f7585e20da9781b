"""A real Spark standalone cluster on this machine: one master and N workers started from the
installed pyspark distribution (``spark-class ...deploy.master.Master`` / ``...deploy.worker.Worker``),
bound to 127.0.0.1, each worker in a folder of its own (its current and work directory), running
Python tasks with the interpreter given (an environment without this project: the jobs' code
reaches executors only through what ``spark-submit`` ships).

For people: ``make cluster-up`` / ``make cluster-down`` (``python -m pipeline.cluster up|down``);
for the tests: :func:`start_cluster` / :func:`stop_cluster`. The cluster's state (URL, pids, logs)
lives in one folder, so ``down`` finds what ``up`` started, and stopping kills each daemon's whole
process group.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pyspark

from common.config import CONF_DIR

STATE_FILE = "cluster.json"


@dataclass
class Cluster:
    master_url: str            # spark://127.0.0.1:PORT
    web_url: str               # the master's web UI (its /json/ says which workers are alive)
    pids: list[int]            # master first, then the workers
    state_dir: str


def spark_class() -> Path:
    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon(args: list[str], folder: Path, env: dict[str, str]) -> int:
    """Start a Spark daemon in ``folder`` (its cwd), logging there, in a process group of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "daemon.log", "ab")
    proc = subprocess.Popen([str(spark_class()), *args], cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    return proc.pid


def alive_workers(web_url: str) -> int:
    try:
        with urllib.request.urlopen(f"{web_url}/json/", timeout=5) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except OSError:
        return 0


def start_cluster(state_dir: str | Path, *, workers: int = 2, worker_python: str, cores: int = 1,
                  memory: str = "1g", timeout: float = 120.0) -> Cluster:
    """Start a master and ``workers`` workers; return once all workers registered with the master."""
    state = Path(state_dir).resolve()
    if (state / STATE_FILE).exists():
        raise RuntimeError(f"{state / STATE_FILE}: a cluster already runs from here (stop it first)")
    if not Path(worker_python).exists():
        raise FileNotFoundError(f"worker Python {worker_python} not found (make worker-env)")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1",
           "PYSPARK_PYTHON": str(Path(worker_python).absolute())}
    env.pop("PYSPARK_DRIVER_PYTHON", None)
    port, web = free_port(), free_port()
    pids = [_daemon(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                     "--webui-port", str(web)], state / "master", env)]
    master_url, web_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web}"
    for i in range(workers):
        folder = state / f"worker{i + 1}"
        pids.append(_daemon(["org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                             "--cores", str(cores), "--memory", memory, "--work-dir", str(folder / "work"),
                             "--webui-port", str(free_port())], folder, env))
    cluster = Cluster(master_url, web_url, pids, str(state))
    (state / STATE_FILE).write_text(json.dumps(asdict(cluster), indent=2))
    deadline = time.monotonic() + timeout
    while alive_workers(web_url) < workers:
        if time.monotonic() > deadline:
            stop_cluster(state)
            raise TimeoutError(f"{workers} workers did not register with {master_url} within {timeout:.0f} s "
                               f"(logs under {state})")
        time.sleep(1.0)
    return cluster


def stop_cluster(state_dir: str | Path, timeout: float = 30.0) -> None:
    """Stop every daemon :func:`start_cluster` started from ``state_dir`` (and their children)."""
    path = Path(state_dir).resolve() / STATE_FILE
    if not path.exists():
        return
    pids = json.loads(path.read_text())["pids"]
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
    path.unlink()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _running(pid: int) -> bool:
    """Whether the daemon's process group still has a live process (reaping the daemon first when
    this process started it, so that a zombie does not count)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def package(out: str | Path) -> Path:
    """The zip of the code executors run (``pipeline`` and ``common``, with package data) and of the
    settings the driver composes (``conf/``), for ``spark-submit --py-files``: built from the
    installed packages, so it is the code the driver runs. With it a job also runs where the driver
    has only the script and the zip (``--deploy-mode cluster``; see :func:`pipeline.config.job_conf_dir`)."""
    if not (CONF_DIR / "pipeline.yaml").is_file():
        raise SystemExit(f"{CONF_DIR}/pipeline.yaml not found: build the archive from a checkout (make dist)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    trees = [(Path(importlib.import_module(name).__file__).parent, Path(name)) for name in ("pipeline", "common")]
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for root, inside in [*trees, (CONF_DIR, Path("conf"))]:
            for f in sorted(root.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".md"):
                    z.write(f, inside / f.relative_to(root))
    tmp.replace(out)
    return out


def executor_requirements(extra: str = "executors") -> list[str]:
    """An extra of this project's metadata: ``executors``, what a worker's Python needs (or
    ``img2dataset``, the downloader's own environment)."""
    reqs = importlib.metadata.requires("locsens") or []
    return [r.split(";")[0].strip() for r in reqs if f'extra == "{extra}"' in r.replace("'", '"')]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["up", "down", "package", "requirements"])
    ap.add_argument("--out", default="dist/locsens-pipeline.zip", help="package: the zip to write")
    ap.add_argument("--dir", default=".cluster", help="the cluster's state folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-python", default=".venv-workers/bin/python")
    ap.add_argument("--extra", default="executors", help="requirements: which extra of the project")
    args = ap.parse_args()
    if args.action == "package":
        print(package(args.out))
    elif args.action == "requirements":
        print(" ".join(executor_requirements(args.extra)))
    elif args.action == "up":
        cluster = start_cluster(args.dir, workers=args.workers, worker_python=args.worker_python)
        print(f"master {cluster.master_url} (web UI {cluster.web_url}); stop with: make cluster-down")
    else:
        stop_cluster(args.dir)
        print("cluster stopped")


if __name__ == "__main__":
    sys.exit(main())
