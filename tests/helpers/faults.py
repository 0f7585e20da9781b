"""The fault table: each fault test records what it did, what the system did, what was lost and
how long recovery took; ``make faults`` (or any pytest run that includes fault tests) prints the
table at the end (tests/conftest.py) and writes it to ``$FAULT_TABLE`` when set."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROWS: list[dict[str, str]] = []
COLUMNS = ("fault", "done", "system", "lost", "recovery")


def record(fault: str, done: str, system: str, lost: str, recovery_s: float) -> None:
    ROWS.append({"fault": fault, "done": done, "system": system, "lost": lost, "recovery": f"{recovery_s:.1f} s"})


def table() -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in ROWS]
    return "\n".join(lines)


def spark_env() -> dict[str, str]:
    """spark-submit from this venv: its Python for driver and workers, loopback only."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def kill_when(argv: list[str], ready: Callable[[], bool], log: Path, *, timeout: float = 600, **popen) -> float:
    """Start ``argv`` in its own process group, SIGKILL the whole group as soon as ``ready()``
    (a progress marker on disk or in the log) holds; returns the seconds it ran. Fails when the
    process ends before the marker appears."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
        try:
            while not ready():
                if proc.poll() is not None:
                    raise AssertionError(f"{argv[:3]} ended (rc {proc.returncode}) before the fault point:\n"
                                         f"{log.read_text()[-2000:]}")
                if time.monotonic() - t0 > timeout:
                    raise AssertionError(f"no fault point within {timeout:.0f} s:\n{log.read_text()[-2000:]}")
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    return time.monotonic() - t0


class MlflowServer:
    """``mlflow server`` on loopback over a SQLite store, which a test can kill and start again."""

    def __init__(self, directory: Path, port: int):
        self.directory, self.port = directory, port
        self.uri = f"http://127.0.0.1:{port}"
        self.argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{directory}/server.db",
                     "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        from helpers.servers import http

        log = open(self.directory / "server.log", "a")
        self.proc = subprocess.Popen(self.argv, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http(f"{self.uri}/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                (self.directory / "server.log").read_text()[-2000:]
            time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
