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

For ``.bz2`` input Spark splits the file and decompresses the parts in parallel; DuckDB's CSV
reader has no bzip2 codec (gzip and zstd only), so its time includes a single-threaded
``bzip2 -dc`` to a temporary file first.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

import duckdb_pipeline  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pipeline.geography import country_continents  # noqa: E402
from pipeline.spark import BATCH_JVM_OPTIONS  # noqa: E402


def world(work: Path, n: int, seed: int, compress: bool) -> Path:
    out = work / f"world_{n}{'_bz2' if compress else ''}"
    cmd = [sys.executable, "-m", "pipeline.synth", "--out", str(out), "--photos", str(n), "--seed", str(seed),
           "--no-images", "--skip-existing"] + (["--compress", "bz2"] if compress else [])
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def run_spark(raw: Path, work: Path, master: str, partitions: int) -> tuple[float, dict]:
    root = work / f"spark_{raw.name}"
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    args = [f"paths.root_dir={root}", f"paths.raw_dir={raw}", f"paths.mlflow_tracking_uri=sqlite:///{root}/mlruns.db",
            f"spark.shuffle_partitions={partitions}"]
    submit = str(Path(sys.executable).with_name("spark-submit"))
    java_opts = f"{BATCH_JVM_OPTIONS} -Dlog4j2.configurationFile={ROOT}/conf/log4j2.properties"
    t = time.perf_counter()
    for job in ("clean_metadata", "build_vocab"):
        r = subprocess.run([submit, "--master", master, "--driver-memory", "4g", "--driver-java-options", java_opts,
                            str(ROOT / "jobs" / f"{job}.py"), *args],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"spark job {job} failed:\n{r.stderr[-3000:]}")
    elapsed = time.perf_counter() - t
    stats = json.loads((root / "data" / "work" / "stats" / "build_vocab.json").read_text())
    return elapsed, stats


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

    reasons = pq.read_table(work / f"spark_{raw.name}" / "data" / "work" / "clean_rejects", columns=["reason"])
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    p.add_argument("--bz2-size", type=int, default=1_000_000, help="0 to skip the .bz2 case")
    p.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (same cores as Spark)")
    p.add_argument("--partitions", type=int, default=8)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.load(ROOT / "conf" / "pipeline.yaml")  # vocab, splits, aliases: the jobs' defaults
    cases = [(n, False) for n in args.sizes] + ([(args.bz2_size, True)] if args.bz2_size else [])
    results = []
    for n, bz in cases:
        raw = world(args.work, n, args.seed, bz)
        spark_s, stats = run_spark(raw, args.work, args.master, args.partitions)
        full_s, full = run_duckdb(raw, args.work, args.threads, cfg, full=True)
        min_s, minimal = run_duckdb(raw, args.work, args.threads, cfg, full=False)
        spark_names = place_name_pairs(
            args.work / f"spark_{raw.name}" / "data" / "work" / "place_names.parquet")
        duck_names = place_name_pairs(args.work / f"duckdb_full_{raw.name}" / "place_names.parquet")
        same = {"clean_images": stats["clean_images"] == full["clean_images"] == minimal["clean_images"],
                "images": stats["images"] == full["images"], "vocab_size": stats["vocab_size"] == full["vocab_size"],
                "rejects_by_reason": spark_rejects(args.work, raw) == full["rejected"],
                "place_names": spark_names == duck_names and stats["place_names"] == len(spark_names)}
        results.append({"lines": n, "bz2": bz, "spark_s": spark_s, "duckdb_full_s": full_s, "duckdb_minimal_s": min_s,
                        "kept": stats["clean_images"], "dataset_images": stats["images"],
                        "place_names_by_level": {"spark": per_level(spark_names),
                                                 "duckdb": per_level(duck_names)},
                        "same_outputs": same})
        print(f"{n:>10,} lines{' .bz2' if bz else '     '}  spark {spark_s:6.1f}s {n / spark_s:>8,.0f} lines/s | "
              f"duckdb same work {full_s:5.1f}s {n / full_s:>8,.0f} lines/s, spark/duckdb {spark_s / full_s:4.2f}x | "
              f"duckdb filter+count only {min_s:5.1f}s, spark/duckdb {spark_s / min_s:4.2f}x", flush=True)
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
    base = plain[0]
    for r in plain[1:]:
        for engine in ("spark_s", "duckdb_full_s"):
            per_line = (r[engine] / r["lines"]) / (base[engine] / base["lines"])
            marginal = (r[engine] - base[engine]) / (r["lines"] - base["lines"]) / (base[engine] / base["lines"])
            print(f"{engine[:-2]:>12} cost per line at {r['lines']:,} / at {base['lines']:,}: {per_line:.2f} "
                  f"(marginal line {base['lines']:,}->{r['lines']:,}: {marginal:.2f})")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_throughput.json").write_text(json.dumps(results, indent=2))
    if not all(all(r["same_outputs"].values()) for r in results):
        sys.exit("Spark and DuckDB outputs differ: the comparison is not like for like")


if __name__ == "__main__":
    main()
