"""Throughput of clean_metadata + build_vocab (Spark, through spark-submit) against DuckDB.

    python bench/pipeline_throughput.py [--sizes 1000000 5000000] [--bz2-size 1000000]

For each size, in the same run: a synthetic metadata-only world (``python -m pipeline.synth
--no-images``, cached under --work), the two Spark jobs timed end to end (JVM start included),
then the same parse / filter / place join / tag normalisation / tag counting / vocabulary in
DuckDB, the single-machine engine a user might pick instead. Prints lines/s for both, the ratio,
and Spark's cost per line relative to the smallest size (flat = scales linearly).

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

from pipeline import yfcc  # noqa: E402


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
    t = time.perf_counter()
    for job in ("clean_metadata", "build_vocab"):
        r = subprocess.run([submit, "--master", master, "--driver-memory", "4g",
                            "--driver-java-options", f"-Dlog4j2.configurationFile={ROOT}/conf/log4j2.properties",
                            str(ROOT / "jobs" / f"{job}.py"), *args],
                           cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"spark job {job} failed:\n{r.stderr[-3000:]}")
    elapsed = time.perf_counter() - t
    stats = json.loads((root / "data" / "work" / "stats" / "build_vocab.json").read_text())
    return elapsed, stats


def duckdb_sql(dataset: str, places: str, drop_top: int, size: int, out: Path) -> list[str]:
    cols = ", ".join(f"'{c}': 'VARCHAR'" for c in yfcc.COLUMNS_25)
    read = (f"read_csv('{dataset}', delim='\t', quote='', escape='', header=false, columns={{{cols}}}, "
            "null_padding=true, ignore_errors=true, max_line_size=4000000)")
    return [
        f"""CREATE TEMP TABLE places AS
            SELECT TRY_CAST(column0 AS BIGINT) AS photo_id,
                   regexp_extract(column1, '(?:^|,)\\d+:([^:,]*):Town(?:,|$)', 1) AS town
            FROM read_csv('{places}', delim='\t', quote='', escape='', header=false,
                          columns={{'column0': 'VARCHAR', 'column1': 'VARCHAR'}}, null_padding=true)""",
        f"""CREATE TEMP TABLE clean AS
            WITH d AS (SELECT TRY_CAST(photo_id AS BIGINT) AS photo_id, TRY_CAST(longitude AS DOUBLE) AS lon,
                              TRY_CAST(latitude AS DOUBLE) AS lat, marker, user_tags FROM {read}),
            t AS (SELECT photo_id, lat, lon,
                         list_distinct(list_filter(
                             list_transform(string_split(user_tags, ','),
                                 lambda x: regexp_replace(lower(url_decode(replace(x, '+', ' '))), '\\s+', '', 'g')),
                             lambda x: x <> '' AND NOT regexp_matches(x, '\\d'))) AS tags
                  FROM d WHERE marker = '0' AND lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180
                        AND NOT (lat = -1 AND lon = -1) AND user_tags <> '')
            SELECT t.*, p.town FROM t JOIN places p USING (photo_id)
            WHERE p.town <> '' AND len(t.tags) > 0""",
        f"""CREATE TEMP TABLE vocab AS
            SELECT row_number() OVER (ORDER BY n DESC, tag) - 1 - {drop_top} AS idx, tag, n FROM
              (SELECT tag, count(*) AS n FROM (SELECT unnest(tags) AS tag FROM clean) GROUP BY tag)
            QUALIFY idx >= 0 AND idx < {size}""",
        f"COPY clean TO '{out}/clean.parquet' (FORMAT parquet)",
        f"COPY vocab TO '{out}/vocab.parquet' (FORMAT parquet)",
    ]


def run_duckdb(raw: Path, work: Path, threads: int, drop_top: int, size: int) -> tuple[float, int]:
    import duckdb

    out = work / f"duckdb_{raw.name}"
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

    dataset, places = plain("yfcc100m_dataset"), plain("yfcc100m_places")
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    for sql in duckdb_sql(str(dataset), str(places), drop_top, size, out):
        con.execute(sql)
    kept = con.execute("SELECT count(*) FROM clean").fetchone()[0]
    con.close()
    for name in temps:
        os.unlink(name)
    return time.perf_counter() - t, kept


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
    cases = [(n, False) for n in args.sizes] + ([(args.bz2_size, True)] if args.bz2_size else [])
    results = []
    for n, bz in cases:
        raw = world(args.work, n, args.seed, bz)
        spark_s, stats = run_spark(raw, args.work, args.master, args.partitions)
        duck_s, duck_kept = run_duckdb(raw, args.work, args.threads, 10, 100_000)
        results.append({"lines": n, "bz2": bz, "spark_s": spark_s, "duckdb_s": duck_s,
                        "spark_kept": stats["clean_images"], "duckdb_kept": duck_kept})
        r = results[-1]
        print(f"{n:>10,} lines{' .bz2' if bz else '     '}  spark {spark_s:7.1f}s {n / spark_s:>9,.0f} lines/s   "
              f"duckdb {duck_s:7.1f}s {n / duck_s:>9,.0f} lines/s   spark/duckdb time {spark_s / duck_s:4.2f}x   "
              f"kept spark {r['spark_kept']:,} duckdb {duck_kept:,}", flush=True)
    base = next(r for r in results if not r["bz2"])
    for r in results:
        if not r["bz2"]:
            per_line = (r["spark_s"] / r["lines"]) / (base["spark_s"] / base["lines"])
            print(f"spark cost per line at {r['lines']:,} relative to {base['lines']:,}: {per_line:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_throughput.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
