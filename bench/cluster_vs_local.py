"""The pipeline's jobs on a 2-worker standalone cluster against ``local[2]``, same input, same run.

    python bench/cluster_vs_local.py [--photos 1000000] [--no-images] [--image-size 32] [--work data/bench]

A synthetic world (cached under --work) goes through clean_metadata, build_vocab, shard_dataset
and frequency_baselines twice through ``spark-submit``: in ``local[2]`` (one JVM, two task slots)
and on a standalone cluster started here (:mod:`pipeline.cluster`: a master and two workers of one
core each, executors in the workers' own Python with the code shipped as a zip). Both have two task
slots on the same cores, so the ratio is the cost of being a cluster (executor start-up, the
shuffle over the network stack, shipping the code and Python workers per executor), not a
speed-up. Prints seconds per job and cluster / local ratios, and checks both runs published the
same row counts. With ``--no-images`` (a 1M-line world with images needs ~13 GB of small files)
the world is metadata only and shard_dataset finds no image: it still assigns, spreads and
sorts every row and writes every reject, but decodes nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cluster import package, start_cluster, stop_cluster  # noqa: E402
from pipeline.spark import BATCH_JVM_OPTIONS  # noqa: E402

JOBS = ("clean_metadata", "build_vocab", "shard_dataset", "frequency_baselines")
WORKER_PYTHON = ROOT / ".venv-workers" / "bin" / "python"


def world(work: Path, photos: int, size: int, seed: int, images: bool) -> Path:
    """The world (cached); metadata-only worlds are named as bench/pipeline_throughput.py names them."""
    out = work / (f"world_{photos}_img{size}" if images else f"world_{photos}")
    extra = ["--image-size", str(size), "--workers", "2"] if images else ["--no-images"]
    subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(out), "--photos", str(photos), "--seed",
                    str(seed), "--skip-existing", *extra], check=True, cwd=ROOT)
    return out


def run(raw: Path, root: Path, spark_args: list[str], settings: list[str]) -> dict[str, float]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env.update(SPARK_LOCAL_IP="127.0.0.1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    java_opts = f"{BATCH_JVM_OPTIONS} -Dlog4j2.configurationFile={ROOT}/conf/log4j2.properties"
    args = [f"paths.root_dir={root}", f"paths.raw_dir={raw}", f"paths.mlflow_tracking_uri=sqlite:///{root}/mlruns.db",
            *settings]
    seconds = {}
    for job in JOBS:
        t = time.perf_counter()
        r = subprocess.run(["spark-submit", *spark_args, "--driver-memory", "4g", "--driver-java-options", java_opts,
                            "--conf", f"spark.pyspark.driver.python={sys.executable}",
                            str(ROOT / "jobs" / f"{job}.py"), *args], cwd=root, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{job} ({spark_args[1]}) failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        seconds[job] = time.perf_counter() - t
    return seconds


def counts(root: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    from common.published import resolve

    work = root / "data" / "work"
    out = {name: sum(pq.read_metadata(p).num_rows for p in resolve(work / name).rglob("*.parquet"))
           for name in ("clean", "clean_rejects", "dataset", "dataset_rejects", "shard_rejects")}
    out["sharded"] = sum(pq.read_metadata(p).num_rows for p in resolve(work / "shards").glob("*/*.parquet"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=1_000_000)
    p.add_argument("--image-size", type=int, default=32, help="side of the world's images")
    p.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--no-images", action="store_true", help="metadata-only world (every image missing)")
    args = p.parse_args()
    if not WORKER_PYTHON.exists():
        sys.exit(f"{WORKER_PYTHON} is missing: make worker-env")
    work = args.work.resolve()
    t = time.perf_counter()
    raw = world(work, args.photos, args.image_size, args.seed, not args.no_images)
    what = "no images" if args.no_images else f"{args.image_size} px images"
    print(f"world: {args.photos:,} lines with {what} ({time.perf_counter() - t:.0f} s)")
    settings = [f"spark.shuffle_partitions={args.partitions}", "shard.image_size=32", "shard.rows_per_file=20000",
                "shard.rows_per_row_group=1000"]
    if args.no_images:
        (work / "no_images").mkdir(parents=True, exist_ok=True)
        settings.append(f"shard.image_root={work / 'no_images'}")
    code = package(work / "locsens-pipeline.zip")
    local = run(raw, work / "local", ["--master", "local[2]", "--conf", f"spark.pyspark.python={sys.executable}"],
                settings)
    state = work / "cluster_state"
    shutil.rmtree(state, ignore_errors=True)
    cluster = start_cluster(state, workers=2, worker_python=str(WORKER_PYTHON), cores=1, memory="3g")
    try:
        remote = run(raw, work / "cluster", ["--master", cluster.master_url, "--py-files", str(code),
                                             "--conf", f"spark.pyspark.python={WORKER_PYTHON}",
                                             "--executor-memory", "3g"], settings)
    finally:
        stop_cluster(state)
    same = counts(work / "local") == counts(work / "cluster")
    print(f"\n{'job':<22}{'local[2] s':>12}{'cluster s':>12}{'cluster/local':>15}")
    for job in JOBS:
        print(f"{job:<22}{local[job]:>12.1f}{remote[job]:>12.1f}{remote[job] / local[job]:>15.2f}")
    total_l, total_c = sum(local.values()), sum(remote.values())
    print(f"{'all four':<22}{total_l:>12.1f}{total_c:>12.1f}{total_c / total_l:>15.2f}")
    print(f"same published row counts: {same} {counts(work / 'local')}")
    if not same:
        sys.exit("the cluster and local runs published different row counts")


if __name__ == "__main__":
    main()
