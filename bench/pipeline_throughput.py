"""Throughput of clean_metadata + build_vocab (Spark, through spark-submit) against DuckDB.

    python bench/pipeline_throughput.py [--sizes 1000000 5000000] [--bz2-size 1000000]

For each size, in the same run: a synthetic metadata-only world (``python -m pipeline.synth
--no-images``, cached under --work), the two Spark jobs timed end to end (JVM start included),
then DuckDB, the single-machine engine a user might pick instead, twice
(:mod:`duckdb_pipeline`):

* **same work**: the same outputs as the Spark jobs (every line kept or rejected with its
  reason, place levels and continents, one row per photo, vocabulary, 1..15-tag dataset with
  splits, the place-name list from every places record, statistics); kept photos, rejects per
  reason, vocabulary and dataset sizes and the place-name list's (name, level) pairs are checked
  equal to Spark's, and the run fails if they are not;
* **filter + count only**: just the kept photos and the vocabulary, the least a user could do.

Prints lines/s, the Spark/DuckDB time ratios, and the cost per line at each size relative to
the smallest (flat = scales linearly; with fixed start-up costs it falls as sizes grow), plus
the marginal cost of the extra lines.

Spark runs as ``make pipeline`` runs it: ``local[2]``, 4 GB driver, the parallel garbage collector.
Each Spark run also reports the bytes its shuffles wrote and the driver's peak JVM heap (from
Spark's event log) and the JVM's peak RSS. ``--spark-only`` skips DuckDB: the scaling table (time,
shuffle bytes and driver memory by input size). In local mode one JVM is driver and executors;
``--spark-only --cluster 2`` runs on a standalone cluster started here (two one-core workers), so
the heap and RSS are the driver's alone. ``--doc docs/benchmarks.md`` writes the tables there.

For ``.bz2`` input Spark splits the file and decompresses the parts in parallel; DuckDB's CSV
reader has no bzip2 codec (gzip and zstd only), so its time includes a single-threaded
``bzip2 -dc`` to a temporary file first.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

import duckdb_pipeline  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from common.markdown import table as md_table  # noqa: E402
from common.markdown import write_block  # noqa: E402
from common.published import resolve  # noqa: E402
from pipeline.geography import country_continents  # noqa: E402
from pipeline.spark import BATCH_JVM_OPTIONS  # noqa: E402


def world(work: Path, n: int, seed: int, compress: bool) -> Path:
    out = work / f"world_{n}{'_bz2' if compress else ''}"
    cmd = [sys.executable, "-m", "pipeline.synth", "--out", str(out), "--photos", str(n), "--seed", str(seed),
           "--no-images", "--skip-existing"] + (["--compress", "bz2"] if compress else [])
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def event_log_figures(folder: Path) -> dict[str, float]:
    """Shuffle bytes written (all tasks) and the driver's peak JVM heap, from Spark's event logs
    in ``folder``: what the jobs did, measured by Spark itself."""
    shuffle, heap = 0, 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):   # Spark 4 rolls logs into a folder per app
        with path.open() as fh:
            for line in fh:
                if '"SparkListenerTaskEnd"' in line:
                    metrics = json.loads(line).get("Task Metrics") or {}
                    shuffle += metrics.get("Shuffle Write Metrics", {}).get("Shuffle Bytes Written", 0)
                elif '"SparkListenerStageExecutorMetrics"' in line:
                    event = json.loads(line)
                    if event.get("Executor ID") == "driver":
                        heap = max(heap, event.get("Executor Metrics", {}).get("JVMHeapMemory", 0))
    return {"shuffle_bytes": shuffle, "driver_peak_heap_bytes": heap}


def run_spark(raw: Path, work: Path, master: str, partitions: int | str,
              cluster_args: list[str] | None = None) -> tuple[float, dict]:
    """Seconds of clean_metadata + build_vocab through spark-submit, and the jobs' statistics with
    shuffle bytes, the driver's peak JVM heap and the peak RSS of spark-submit's process tree (in
    local mode the one JVM that is driver and executors; with ``cluster_args`` on a standalone
    master the driver JVM and its Python alone, the executors running in the workers)."""
    root = work / f"spark_{raw.name}"
    shutil.rmtree(root, ignore_errors=True)
    events = root / "events"
    events.mkdir(parents=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    if cluster_args is not None:      # the executors' Python is the workers' (spark.pyspark.python)
        env = {k: v for k, v in env.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    args = [f"paths.root_dir={root}", f"paths.raw_dir={raw}", f"paths.mlflow_tracking_uri=sqlite:///{root}/mlruns.db",
            f"spark.shuffle_partitions={partitions}"]
    submit = str(Path(sys.executable).with_name("spark-submit"))
    java_opts = f"{BATCH_JVM_OPTIONS} -Dlog4j2.configurationFile={ROOT}/conf/log4j2.properties"
    t, peak_rss = time.perf_counter(), 0
    for job in ("clean_metadata", "build_vocab"):
        log = root / f"{job}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([submit, "--master", master, *(cluster_args or []), "--driver-memory", "4g",
                                     "--driver-java-options", java_opts, "--conf", "spark.eventLog.enabled=true",
                                     "--conf", f"spark.eventLog.dir=file://{events}",
                                     "--conf", "spark.eventLog.compress=false",
                                     "--conf", "spark.eventLog.logStageExecutorMetrics=true",
                                     str(ROOT / "jobs" / f"{job}.py"), *args],
                                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        peak_rss = max(peak_rss, usage.ru_maxrss * 1024)   # KiB on Linux; spark-submit execs the JVM
        if proc.returncode != 0:
            sys.exit(f"spark job {job} failed:\n{log.read_text()[-3000:]}")
    elapsed = time.perf_counter() - t
    stats = json.loads((resolve(root / "data" / "work" / "stats") / "build_vocab.json").read_text())
    return elapsed, {**stats, **event_log_figures(events), "peak_rss_bytes": peak_rss}


def run_duckdb(raw: Path, work: Path, threads: int, cfg, *, full: bool) -> tuple[float, dict]:
    """Seconds and counts of the DuckDB pipeline (:mod:`duckdb_pipeline`), bz2 decompression included."""
    import duckdb
    import pandas as pd

    out = work / f"duckdb_{'full' if full else 'minimal'}_{raw.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    temps = []

    def plain(name: str) -> Path:
        """The file itself, or a single-threaded ``bzip2 -dc`` copy of its .bz2 (DuckDB reads no bzip2)."""
        if (raw / name).exists():
            return raw / name
        tmp = tempfile.NamedTemporaryFile(dir=work, suffix=".tsv", delete=False)
        with open(tmp.name, "wb") as fh:
            subprocess.run(["bzip2", "-dc", str(raw / f"{name}.bz2")], stdout=fh, check=True)
        temps.append(tmp.name)
        return Path(tmp.name)

    dataset, places = str(plain("yfcc100m_dataset")), str(plain("yfcc100m_places"))
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    v = cfg.vocab
    if full:
        aliases = OmegaConf.to_container(cfg.clean.country_aliases)
        con.register("_cc", pd.DataFrame(country_continents(aliases), columns=["country", "continent"]))
        con.execute("CREATE TEMP TABLE continents AS SELECT * FROM _cc")
        statements = duckdb_pipeline.full_sql(dataset, places, str(out), drop_top=v.drop_top, size=v.size,
                                              min_tags=v.min_tags, max_tags=v.max_tags, test=cfg.splits.test,
                                              val=cfg.splits.val, seed=cfg.splits.seed)
    else:
        statements = duckdb_pipeline.minimal_sql(dataset, places, v.drop_top, v.size, str(out))
    for sql in statements:
        con.execute(sql)
    if full:
        counts = dict(zip(("clean_images", "images", "vocab_size"),
                          con.execute("SELECT clean_images, images, (SELECT count(*) FROM vocab) FROM stats").fetchone()))
        counts["rejected"] = dict(con.execute(
            "SELECT reason, count(*) FROM classified WHERE reason IS NOT NULL GROUP BY reason").fetchall())
    else:
        counts = {"clean_images": con.execute("SELECT count(*) FROM clean").fetchone()[0]}
    con.close()
    for name in temps:
        os.unlink(name)
    return time.perf_counter() - t, counts


def spark_rejects(work: Path, raw: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    reasons = pq.read_table(resolve(work / f"spark_{raw.name}" / "data" / "work" / "clean_rejects"), columns=["reason"])
    return {r["values"]: r["counts"] for r in reasons.column("reason").value_counts().to_pylist()}


def place_name_pairs(path: Path) -> set[tuple[str, str]]:
    """The (name, level) pairs of a place-name list (a Parquet file or Spark's folder)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["name", "level"])
    return set(zip(t.column("name").to_pylist(), t.column("level").to_pylist()))


def per_level(pairs: set[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, level in pairs:
        out[level] = out.get(level, 0) + 1
    return dict(sorted(out.items()))


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def scaling_table(results: list[dict]) -> str:
    """Spark's time, shuffle and memory by input size, each size's cost per line relative to the smallest's."""
    base = results[0]
    rows = [[f"{r['lines']:,}" + (" (.bz2)" if r["bz2"] else ""), f"{r['spark_s']:.1f}", f"{r['lines'] / r['spark_s']:,.0f}",
             f"{(r['spark_s'] / r['lines']) / (base['spark_s'] / base['lines']):.2f}", _mib(r["shuffle_bytes"]),
             f"{r['shuffle_bytes'] / r['lines']:.0f}", _mib(r["driver_peak_heap_bytes"]), _mib(r["peak_rss_bytes"])]
            for r in results]
    return md_table(["lines", "Spark s", "lines/s", "cost per line vs first", "shuffle written MiB",
                     "shuffle bytes/line", "driver peak heap MiB", "peak RSS MiB"], rows)


def ratio_table(results: list[dict]) -> str:
    rows = [[f"{r['lines']:,}" + (" (.bz2)" if r["bz2"] else ""), f"{r['spark_s']:.1f}", f"{r['duckdb_full_s']:.1f}",
             f"{r['spark_s'] / r['duckdb_full_s']:.2f}x", f"{r['duckdb_minimal_s']:.1f}",
             f"{r['spark_s'] / r['duckdb_minimal_s']:.2f}x", "yes" if all(r["same_outputs"].values()) else "NO"]
            for r in results]
    return md_table(["lines", "Spark s", "DuckDB same work s", "Spark/DuckDB", "DuckDB filter+count s",
                     "Spark/filter+count", "outputs equal"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    p.add_argument("--bz2-size", type=int, default=1_000_000, help="0 to skip the .bz2 case")
    p.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (same cores as Spark)")
    p.add_argument("--partitions", default="8", help="spark.shuffle_partitions (a number, or auto)")
    p.add_argument("--spark-only", action="store_true",
                   help="Spark alone: the scaling table (time, shuffle bytes, driver memory by size)")
    p.add_argument("--cluster", type=int, default=0, metavar="WORKERS",
                   help="with --spark-only: run on a standalone cluster of this many one-core workers started "
                        "here, so that the driver's heap and RSS are the driver's alone (block pipeline-driver)")
    p.add_argument("--doc", type=Path, help="also write the table into this page's block pipeline-throughput "
                                            "(or pipeline-scaling with --spark-only, pipeline-driver with --cluster)")
    args = p.parse_args()
    if args.cluster and not args.spark_only:
        p.error("--cluster measures the driver alone: use it with --spark-only")
    with standalone(args.cluster, args.work) as cluster_args:
        if cluster_args is not None:
            args.master, cluster_args = cluster_args[0], cluster_args[1:]
        measure(args, cluster_args)


@contextlib.contextmanager
def standalone(workers: int, work: Path) -> Iterator[list[str] | None]:
    """A standalone cluster of ``workers`` one-core workers for the run ([master, spark-submit
    arguments]), stopped after it; None (local mode) for 0 workers."""
    if not workers:
        yield None
        return
    from pipeline.cluster import package, start_cluster, stop_cluster

    worker_python = ROOT / ".venv-workers" / "bin" / "python"
    if not worker_python.exists():
        sys.exit(f"{worker_python} is missing: make worker-env")
    code = package(work / "locsens-pipeline.zip")
    state = work / "cluster_state"
    stop_cluster(state)
    shutil.rmtree(state, ignore_errors=True)
    cluster = start_cluster(state, workers=workers, worker_python=str(worker_python), cores=1, memory="3g")
    try:
        yield [cluster.master_url, "--py-files", str(code), "--executor-memory", "3g",
               "--conf", f"spark.pyspark.python={worker_python}", "--conf", f"spark.pyspark.driver.python={sys.executable}"]
    finally:
        stop_cluster(state)


def measure(args: argparse.Namespace, cluster_args: list[str] | None) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.load(ROOT / "conf" / "pipeline.yaml")  # vocab, splits, aliases: the jobs' defaults
    cases = [(n, False) for n in args.sizes] + ([(args.bz2_size, True)] if args.bz2_size else [])
    results = []
    for n, bz in cases:
        raw = world(args.work, n, args.seed, bz)
        spark_s, stats = run_spark(raw, args.work, args.master, args.partitions, cluster_args)
        result = {"lines": n, "bz2": bz, "spark_s": spark_s, "kept": stats["clean_images"],
                  "dataset_images": stats["images"],
                  **{k: stats[k] for k in ("shuffle_bytes", "driver_peak_heap_bytes", "peak_rss_bytes")}}
        print(f"{n:>10,} lines{' .bz2' if bz else '     '}  spark {spark_s:6.1f}s {n / spark_s:>8,.0f} lines/s, "
              f"shuffle {_mib(stats['shuffle_bytes'])} MiB, driver heap peak {_mib(stats['driver_peak_heap_bytes'])} "
              f"MiB, peak RSS {_mib(stats['peak_rss_bytes'])} MiB", flush=True)
        if args.spark_only:
            results.append(result)
            continue
        full_s, full = run_duckdb(raw, args.work, args.threads, cfg, full=True)
        min_s, minimal = run_duckdb(raw, args.work, args.threads, cfg, full=False)
        spark_names = place_name_pairs(
            resolve(args.work / f"spark_{raw.name}" / "data" / "work" / "place_names.parquet"))
        duck_names = place_name_pairs(args.work / f"duckdb_full_{raw.name}" / "place_names.parquet")
        same = {"clean_images": stats["clean_images"] == full["clean_images"] == minimal["clean_images"],
                "images": stats["images"] == full["images"], "vocab_size": stats["vocab_size"] == full["vocab_size"],
                "rejects_by_reason": spark_rejects(args.work, raw) == full["rejected"],
                "place_names": spark_names == duck_names and stats["place_names"] == len(spark_names)}
        results.append({**result, "duckdb_full_s": full_s, "duckdb_minimal_s": min_s,
                        "place_names_by_level": {"spark": per_level(spark_names),
                                                 "duckdb": per_level(duck_names)},
                        "same_outputs": same})
        print(f"{'':>16}duckdb same work {full_s:5.1f}s {n / full_s:>8,.0f} lines/s, spark/duckdb "
              f"{spark_s / full_s:4.2f}x | duckdb filter+count only {min_s:5.1f}s, spark/duckdb {spark_s / min_s:4.2f}x",
              flush=True)
        print(f"{'':>16}kept {stats['clean_images']:,}, dataset {stats['images']:,}; outputs agree: "
              + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()), flush=True)
        print(f"{'':>16}place names by level: spark {per_level(spark_names)}, duckdb {per_level(duck_names)}",
              flush=True)
        if not same["place_names"]:
            for label, extra in (("spark only", spark_names - duck_names),
                                 ("duckdb only", duck_names - spark_names)):
                if extra:
                    print(f"{'':>16}{label} ({len(extra)}): {sorted(extra)[:10]}", flush=True)
    plain = [r for r in results if not r["bz2"]]
    text = scaling_table(plain) if args.spark_only else ratio_table(results) + "\n\n" + scaling_table(plain)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    block = "pipeline-throughput" if not args.spark_only else "pipeline-driver" if cluster_args else "pipeline-scaling"
    (out / f"{block.replace('-', '_')}.json").write_text(json.dumps(results, indent=2))
    if not args.spark_only and not all(all(r["same_outputs"].values()) for r in results):
        sys.exit("Spark and DuckDB outputs differ: the comparison is not like for like")
    if args.doc:
        write_block(args.doc, block, text,
                    " ".join(["python bench/pipeline_throughput.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
