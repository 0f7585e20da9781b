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
