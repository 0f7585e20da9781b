"""Named points where a fault test stops a real process, so that it can kill it exactly there.

``LOCSENS_FAILPOINT=<name>[@<where>]:<marker path>`` makes the process, on reaching point
``<name>`` (at ``<where>``, when given), write the marker file and wait (to be killed with SIGKILL
from outside). Unset, :func:`reach` is one environment lookup. Points: ``publish`` (pipeline/io.py:
every output written, none published yet); ``train_batch@<rank>.<epoch>.<batch>`` (training.run,
only while the variable is set: before that training batch).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "LOCSENS_FAILPOINT"


def reach(name: str, where: str = "") -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, marker = spec.partition(":")
    if point not in (name, f"{name}@{where}") or not marker:
        return
    # Written aside and renamed: the test acts as soon as the marker exists, and must never read it
    # empty (it did once, under load, between the file's creation and its write).
    partial = Path(f"{marker}.{os.getpid()}.partial")
    partial.write_text(f"{os.getpid()}\n")
    os.replace(partial, marker)
    while True:              # until the test kills this process
        time.sleep(1)
