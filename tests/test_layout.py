"""The layout keeps the project's one-way rule: the data side (pipeline/, Spark) and the model
side (training/, torch) share only common/, which imports neither."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> dict[str, set[str]]:
    """File -> top-level modules it imports (at module level or inside functions)."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("training", {"pipeline", "pyspark"}),
    ("common", {"torch", "torchvision", "pytorch_lightning", "pyspark", "pipeline", "training"}),
    ("pipeline", {"torch", "torchvision", "pytorch_lightning", "training"}),
])
def test_each_side_imports_only_what_the_layout_allows(package, forbidden):
    offending = {f: sorted(names & forbidden) for f, names in imported_modules(package).items() if names & forbidden}
    assert offending == {}


def test_every_package_says_what_belongs_there():
    for init in sorted([*(ROOT / "training").rglob("__init__.py"), ROOT / "common" / "__init__.py"]):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "docs/architecture.md" in doc, f"{init.relative_to(ROOT)}: no docstring pointing to the tour"


#: What Spark executors import to run the jobs' Python (the shard writer, the baselines' A@k).
EXECUTOR_MODULES = ("pipeline.shards", "pipeline.images", "pipeline.shard_progress", "pipeline.baselines")


def test_executor_code_imports_only_the_executors_extra():
    """Executors have the `executors` extra and pyspark, not hydra, omegaconf, mlflow or torch: the
    modules their tasks import must load without them (the cluster test finds this out slowly)."""
    import subprocess
    import sys

    blocked = ("hydra", "omegaconf", "mlflow", "torch", "torchvision", "pytorch_lightning")
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "".join(f"import {m}\n" for m in EXECUTOR_MODULES))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
