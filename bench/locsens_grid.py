"""Where LocSens wins or loses against MCC on the demo: a small grid of training settings, each run
under several seeds on that seed's own MCC, with learning curves.

    python bench/locsens_grid.py [--variants base wide ...] [--seeds 1 2 3] [--jobs 2] [--doc docs/findings.md]

For each seed, MCC is trained first (``+experiment=mcc +sample=image seed=<s>``, into
``<out>/mcc_s<s>``), then every variant on that MCC's export, so that each LocSens run is compared
with the very MCC it reads (the paired comparison the findings need: MCC's A@1 moves by several
points between seeds). A variant is an experiment with the demo's CPU settings and overrides on
top; every run evaluates as the demo's do, logs to its own tracking store (``<out>/mlruns.db``), and
logs ``val/A_at_1`` and ``val/A_at_10`` every few epochs (callbacks.val_tagging, on a few hundred
validation images: the seconds include them), so its learning curve sits beside MCC's (which logs
them from every validation batch). Runs already finished (their ``metrics.json``)
are kept. Prints one table per variant (mean ± sd over seeds, and LocSens minus its own MCC), the
curves, and the seconds per run; ``--doc`` writes them into a block of a page (``--block``, default
``locsens-grid``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402

from common.markdown import table, write_block  # noqa: E402
from training.tracking import RUN_FILE  # noqa: E402

#: name -> (experiment, CPU sample settings, overrides): the demo's settings and the grid around them.
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "base": ("locsens_raw", "locsens", []),
    "zeroed": ("locsens_zeroed", "locsens", []),
    "wide": ("locsens_raw", "locsens", ["model.hidden=[1024,1024,512]"]),
    "epochs50": ("locsens_raw", "locsens", ["trainer.max_epochs=50"]),
    "epochs10": ("locsens_raw", "locsens", ["trainer.max_epochs=10"]),
    "lr0.03": ("locsens_raw", "locsens", ["model.optimizer.lr=0.03"]),
    "lr0.3": ("locsens_raw", "locsens", ["model.optimizer.lr=0.3"]),
    "batch256": ("locsens_raw", "locsens", ["data.batch_size=256", "data.negative_pool=256", "model.optimizer.lr=0.4"]),
    "negatives24": ("locsens_raw", "locsens", ["model.negatives=24"]),
    "pool1024": ("locsens_raw", "locsens", ["data.negative_pool=1024"]),
    # The paper's MLP, budgeted: ~110x the demo MLP's multiply-adds per triplet, so 4 epochs and a
    # shortlist evaluation (MCC's best 100 tags per image, docs/evaluation.md) instead of all pairs.
    "paper": ("locsens_raw", "locsens", ["model.hidden=[2048,2048,2048,1024,512]", "trainer.max_epochs=4",
                                         "evaluation.mode=rerank"]),
    "retrieval": ("locsens_raw_retrieval", "locsens", []),
    "zeroed_retrieval": ("locsens_zeroed_retrieval", "locsens", []),
    "sigma": ("locsens", "locsens_sigma", []),
}
#: The blocks of docs/findings.md this script writes: the grid, the paper-size run, MCC's epochs.
BLOCKS = ("locsens-grid", "locsens-grid-paper", "mcc-epochs")
TAGGING = ["tagging/A@1", "tagging/A@10", "tagging/A@1_noplaces", "tagging/A@10_noplaces"]
RETRIEVAL = ["retrieval/P@10_agnostic", "retrieval/P@10_2500km", "retrieval/P@10_25km", "retrieval/P@10_1km"]


def run(argv: list[str], run_dir: Path, log: Path) -> None:
    """One ``training.run`` (skipped when its ``metrics.json`` exists)."""
    if (run_dir / "metrics.json").exists():
        return
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", "training.run", *argv], cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode
    if code:
        sys.exit(f"{run_dir.name} failed (exit {code}): see {log}")


class TrainingRun:
    """The MLflow training run that wrote a run directory (``mlflow_run.json``), read once: its
    wall seconds (fit and evaluation, as MLflow timed them) and its metric histories."""

    def __init__(self, client: mlflow.MlflowClient, run_dir: Path):
        self.client = client
        info = client.get_run(json.loads((run_dir / RUN_FILE).read_text())["run_id"]).info
        self.run_id = info.run_id
        self.seconds = (info.end_time - info.start_time) / 1000.0 if info.end_time else float("nan")

    def curve(self, key: str) -> list[float]:
        """``key`` at each of its logged steps."""
        return [m.value for m in sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: m.step)]


def points(values: list[float], digits: int = 0) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def cell(values: list[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "grid")
    ap.add_argument("--curve-images", type=int, default=256, help="validation images of the learning curves")
    ap.add_argument("--curve-every", type=int, default=5, help="epochs between the curves' points")
    ap.add_argument("--doc", type=Path, help="also write the tables into a block of this page")
    ap.add_argument("--block", default="locsens-grid", choices=BLOCKS, help="the page's block to write")
    ap.add_argument("--mcc", nargs="*", default=[], metavar="KEY=VALUE",
                    help="settings MCC's runs get on top of the demo's (e.g. trainer.max_epochs=6)")
    ap.add_argument("overrides", nargs="*", help="key=value settings every run gets")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.out.resolve()}/mlruns.db"
    mlflow.MlflowClient(uri).search_experiments()     # the store made once, before runs start in parallel
    common = [f"paths.mlflow_tracking_uri={uri}", "torch_threads=1", *args.overrides]
    curves_on = [f"callbacks.val_tagging.images={args.curve_images}",
                 f"callbacks.val_tagging.every_n_epochs={args.curve_every}"]

    def mcc(seed: int) -> None:
        run_dir = args.out / f"mcc_s{seed}"
        run(["+experiment=mcc", "+sample=image", f"seed={seed}", f"run_dir={run_dir}", *common, *args.mcc],
            run_dir, args.out / f"mcc_s{seed}.log")

    def locsens(job: tuple[str, int]) -> None:
        name, seed = job
        experiment, sample, extra = VARIANTS[name]
        run_dir = args.out / f"{name}_s{seed}"
        argv = [f"+experiment={experiment}", f"+sample={sample}", f"seed={seed}", f"run_dir={run_dir}",
                f"data.embeddings_dir={args.out / f'mcc_s{seed}' / 'embeddings'}", *common, *curves_on, *extra]
        run(argv, run_dir, args.out / f"{name}_s{seed}.log")

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(mcc, args.seeds))
        list(pool.map(locsens, [(n, s) for n in args.variants for s in args.seeds]))

    def metrics(name: str, seed: int) -> dict[str, float]:
        return json.loads((args.out / f"{name}_s{seed}" / "metrics.json").read_text())

    client = mlflow.MlflowClient(uri)
    trained = {(name, s): TrainingRun(client, args.out / f"{name}_s{s}") for name in ["mcc", *args.variants]
               for s in args.seeds}
    base = {s: metrics("mcc", s) for s in args.seeds}
    rows, curves = [], []
    for name in ["mcc", *args.variants]:
        got = {s: metrics(name, s) for s in args.seeds}
        final = {s: {k.split("/", 1)[1] if k.startswith("locsens_sigma_0/") else k: v for k, v in m.items()}
                 for s, m in got.items()}          # a sigma run's final (sigma = 0) snapshot
        row = [name] + [cell([final[s].get(k, float("nan")) for s in args.seeds]) for k in TAGGING + RETRIEVAL]
        if name != "mcc":
            row.append(cell([final[s].get("tagging/A@1", float("nan")) - base[s]["tagging/A@1"] for s in args.seeds]))
        else:
            row.append("")
        row.append(cell([trained[name, s].seconds for s in args.seeds]))
        rows.append(row)
        for s in args.seeds:
            done = trained[name, s]
            loss = done.curve("val/loss")
            curves.append([name, str(s), points(done.curve("val/A_at_1")), points(done.curve("val/A_at_10")),
                           f"{loss[0]:.4f} -> {loss[-1]:.4f}" if loss else "-"])
    header = ["variant", "A@1", "A@10", "A@1 np", "A@10 np", "P@10 agn", "2500 km", "25 km", "1 km",
              "A@1 - its MCC", "seconds"]
    text = (f"Seeds {args.seeds}; mean ± sd over them (np: place names omitted; seconds: one run's training and "
            f"evaluation as MLflow timed it, on one thread, {args.jobs} at a time; '-': the variant is not scored "
            "on that task).\n\n"
            + table(header, rows) + f"\n\nValidation A@1 and A@10 every {args.curve_every} epochs "
            f"({args.curve_images} validation images; MCC: every epoch, all validation images):\n\n"
            + table(["variant", "seed", "val A@1", "val A@10", "val loss, first -> last epoch"], curves))
    print(text)
    if args.doc:
        write_block(args.doc, args.block, text, " ".join(["python bench/locsens_grid.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
