"""Fuzzed YFCC100M lines through the real clean_metadata job (Spark): whatever the bytes, every
line the file holds ends up kept or rejected with a known reason, the counts add up, and the job
finishes. Lines are real-format lines mutated by hypothesis: random bytes, wrong field counts,
enormous fields, broken percent-escapes, NUL bytes, lone CR."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from helpers.faults import record
from helpers.spark_jobs import job_config, output_path
from helpers.yfcc import TOWNS, at

from pipeline import clean

pytestmark = [pytest.mark.spark, pytest.mark.faults]

FIELDS = 25
TOWN_NAMES = ("nyc", "galway", "paris")


def _mutate(text: str, kind: str, data: bytes, where: float) -> bytes:
    raw = text.encode()
    cut = int(where * len(raw))
    fields = text.split("\t")
    if kind == "bytes":                      # random bytes spliced in (may hold LF, CR, invalid UTF-8)
        return raw[:cut] + data + raw[cut:]
    if kind == "fields":                     # too few or too many TABs
        n = 1 + int(where * 40)
        return "\t".join((fields * 2)[:n]).encode()
    if kind == "huge":                       # one enormous field
        i = int(where * (FIELDS - 1))
        fields[i] = fields[i] + "x" * 300_000
        return "\t".join(fields).encode()
    if kind == "escapes":                    # broken percent-escapes in the tags and elsewhere
        bad = ["%", "%G1", "%E2%82", "%zz%", "%%%", "%C3", "caf%C3%A9%"][int(where * 7) % 7]
        fields[10] = f"{bad},new+york,{bad}cat"
        fields[int(where * (FIELDS - 1))] += bad
        return "\t".join(fields).encode()
    if kind == "nul":
        return raw[:cut] + b"\x00" * (1 + len(data) % 4) + raw[cut:]
    if kind == "cr":                         # a lone CR: Hadoop's reader ends a line there
        return raw[:cut] + b"\r" + raw[cut:]
    return raw


@st.composite
def fuzzed_line(draw) -> tuple[int, bytes]:
    pid = draw(st.integers(1, 60))
    town = draw(st.sampled_from(TOWN_NAMES))
    text = at(town, pid, tags=draw(st.sampled_from(["cat,dog", "new+york,caf%C3%A9", ""])))
    kind = draw(st.sampled_from(["none", "bytes", "fields", "huge", "escapes", "nul", "cr"]))
    return pid, _mutate(text, kind, draw(st.binary(min_size=1, max_size=40)), draw(st.floats(0, 1)))


def hadoop_lines(data: bytes) -> int:
    """How many lines Hadoop's line reader sees: ends at LF, CR LF or CR; a last line may lack one."""
    parts = re.split(rb"\r\n|\r|\n", data)
    return len(parts) - (1 if parts and parts[-1] == b"" else 0)


REASONS = set(clean.REJECT_REASONS)
TOTALS: dict = {"files": 0, "lines": 0, "kept": 0, "rejected": 0, "reasons": set()}


@pytest.fixture(scope="module", autouse=True)
def fault_row():
    """One fault-table row for all the generated files."""
    yield
    if TOTALS["files"]:
        record("fuzzed YFCC lines", f"{TOTALS['lines']} lines in {TOTALS['files']} files (random bytes, wrong field "
               "counts, huge fields, broken escapes, NUL, lone CR) through clean_metadata",
               f"{TOTALS['kept']} kept, {TOTALS['rejected']} rejected with {len(TOTALS['reasons'])} known reasons; "
               "no crash", "0 lines", 0.0)


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.lists(fuzzed_line(), min_size=1, max_size=30))
@example([(7, b"\xff\xfe\x00garbage\rmore\tgarbage\n\x80"), (8, at("nyc", 8).encode().replace(b"\t", b"\t\x00", 3))])
@example([(9, at("paris", 9, tags="%E2%82,%,%G1").encode()), (10, ("x\t" * 40).encode()), (11, b"\r\r\n\n")])
def test_every_fuzzed_line_is_kept_or_rejected_with_a_reason(spark, tmp_path_factory, lines):
    from jobs.clean_metadata import main

    tmp = tmp_path_factory.mktemp("fuzz")
    raw = tmp / "raw"
    raw.mkdir()
    # The first line is a real one (the job reads the file's layout from its first lines).
    data = at("nyc", 100).encode() + b"\n" + b"\n".join(line for _, line in lines) + b"\n"
    (raw / "yfcc100m_dataset").write_bytes(data)
    places = {pid: TOWNS[TOWN_NAMES[pid % 3]] for pid in range(1, 101)}
    (raw / "yfcc100m_places").write_text("".join(f"{k}\t{v}\n" for k, v in places.items()))
    cfg = job_config(tmp, raw)
    main(cfg)
    kept = spark.read.parquet(str(output_path(cfg.outputs.clean)))
    rejects = spark.read.parquet(str(output_path(cfg.outputs.clean_rejects)))
    n_kept, n_rejected = kept.count(), rejects.count()
    assert n_kept + n_rejected == hadoop_lines(data)
    reasons = {r["reason"] for r in rejects.select("reason").distinct().collect()}
    assert reasons <= REASONS, reasons - REASONS
    assert n_kept >= 1                                       # the real first line
    bad = kept.where("latitude < -90 or latitude > 90 or longitude < -180 or longitude > 180 or photo_id is null")
    assert bad.count() == 0
    TOTALS["files"] += 1
    TOTALS["lines"] += hadoop_lines(data)
    TOTALS["kept"] += n_kept
    TOTALS["rejected"] += n_rejected
    TOTALS["reasons"] |= reasons
