"""Named points where a fault test stops a real process, so that it can kill it exactly there.

``LOCSENS_FAILPOINT=<name>:<marker path>`` makes the process, on reaching point ``<name>``, write
the marker file and wait (to be killed with SIGKILL from outside). Unset, :func:`reach` is one
environment lookup. Points: ``publish`` (pipeline/io.py: every output written, none published yet).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "LOCSENS_FAILPOINT"


def reach(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, marker = spec.partition(":")
    if point != name or not marker:
        return
    Path(marker).write_text(f"{os.getpid()}\n")
    while True:              # until the test kills this process
        time.sleep(1)
