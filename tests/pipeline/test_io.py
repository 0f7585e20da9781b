"""pipeline.io: a job's outputs are written to new versions, checked, and published by pointers, without renames."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import ROOT
from helpers.spark_jobs import digests, leftovers, output_path

from common import published
from pipeline import io
from pipeline.config import PipelineError, load_config
from pipeline.stage import check_conservation

pytestmark = pytest.mark.spark


def _write_set(staged: io.OutputSet, work: Path, ids: list[int], rejected: int) -> None:
    """Stage a table, its rejects and a stats file, as a job does."""
    spark = staged.spark
    staged.write_parquet(spark.createDataFrame([(i,) for i in ids], "photo_id long"), str(work / "kept"),
                         partitions=1, sort_by=["photo_id"])
    staged.write_parquet(spark.createDataFrame([(i, "bad") for i in range(rejected)], "photo_id long, reason string"),
                         str(work / "rejects"), partitions=1)
    staged.write_texts(str(work / "stats"), {"job.json": f'{{"kept": {len(ids)}}}'})


def _outputs(work: Path) -> list[dict[str, str]]:
    return [digests(work / "kept"), digests(work / "rejects"), digests(work / "stats")]


def _publish(spark, work: Path, ids: list[int], rejected: int) -> list[dict[str, str]]:
    """A set of outputs published without a check, and their digests."""
    with io.staged_outputs(spark) as staged:
        _write_set(staged, work, ids, rejected)
    return _outputs(work)


def _assert_no_leftovers(work: Path) -> None:
    assert leftovers(work) == []
    for name in ("kept", "rejects", "stats"):    # one pointer, one version
        assert len(os.listdir(work / name)) == 2, os.listdir(work / name)


def test_outputs_appear_together_after_the_check(spark, tmp_path, no_renames):
    work = tmp_path / "work"
    with io.staged_outputs(spark) as staged:
        staged.write_parquet(spark.createDataFrame([(1,), (2,)], "photo_id long"), str(work / "kept"))
        staged.write_parquet(spark.createDataFrame([(3, "bad")], "photo_id long, reason string"), str(work / "rejects"))
        staged.write_texts(str(work / "stats"), {"job.json": "{}"})
        # Nothing is published while the job counts what it wrote and checks it.
        assert all(published.published_pointer(work / n) is None for n in ("kept", "rejects", "stats"))
        with pytest.raises(PipelineError, match="outputs.clean: input .*kept has no published version"):
            io.require_outputs(spark, {"clean": str(work / "kept")}, "clean")
        n_kept = staged.read_parquet(str(work / "kept")).count()
        n_rejected = staged.read_parquet(str(work / "rejects")).count()
        check_conservation("test", 3, {"kept": n_kept, "rejected": n_rejected})
    found = io.require_outputs(spark, {"clean": str(work / "kept"), "clean_rejects": str(work / "rejects")},
                               "clean", "clean_rejects")
    assert sorted(r["photo_id"] for r in spark.read.parquet(found["clean"]).collect()) == [1, 2]
    assert found["clean"] == str(output_path(work / "kept"))
    assert (output_path(work / "stats") / "job.json").read_text() == "{}"
    _assert_no_leftovers(work)


def test_failed_check_keeps_the_previous_outputs(spark, tmp_path, no_renames):
    work = tmp_path / "work"
    before = _publish(spark, work, [1, 2], 1)
    with pytest.raises(PipelineError, match="3 input rows but kept 3 \\+ rejected 2 = 5"):
        with io.staged_outputs(spark) as staged:
            _write_set(staged, work, [4, 5, 6], 2)
            check_conservation("test", 3, {"kept": 3, "rejected": 2})
    assert _outputs(work) == before
    _assert_no_leftovers(work)
    after = _publish(spark, work, [4, 5, 6], 2)     # a passing check replaces all of them
    assert all(a != b for a, b in zip(after, before))
    _assert_no_leftovers(work)


def test_a_torn_pointer_is_never_followed(spark, tmp_path, no_renames):
    """A kill while the pointer was being written leaves a file that does not parse: readers keep
    the version published before, and the next run removes it and publishes."""
    work = tmp_path / "work"
    before = _publish(spark, work, [1, 2], 1)
    first = published.published_pointer(work / "kept")
    (work / "kept" / published.pointer_name(first.seq + 1)).write_text('{"version": "v2026')   # torn
    assert published.published_pointer(work / "kept") == first
    assert io.published_version(spark, str(work / "kept")) == first
    assert _outputs(work) == before
    _publish(spark, work, [7], 0)        # the torn pointer is removed when the run starts, and its number reused
    assert published.published_pointer(work / "kept").seq == first.seq + 1
    _assert_no_leftovers(work)


def test_recovery_removes_unpublished_versions_and_never_the_published_one(spark, tmp_path, no_renames):
    """What a killed run leaves, for each place it can be killed: a version not yet published (deleted by
    the next run); a new pointer written but the old version not yet deleted (the new one stays, the old
    goes). The published version is never deleted."""
    work = tmp_path / "work"
    before = _publish(spark, work, [1, 2], 1)
    v1 = published.published_pointer(work / "kept").version
    killed = work / "kept" / published.new_version()
    (killed / "part-0.parquet").parent.mkdir()
    (killed / "part-0.parquet").write_bytes(b"half")
    assert io.recover_leftovers(spark, str(work / "kept")).version == v1
    assert not killed.exists() and _outputs(work) == before
    # Killed after publishing, before removing what it replaced: both versions are there, the new one published.
    kept_old = work / "kept_old"
    import shutil
    shutil.copytree(work / "kept", kept_old)
    _publish(spark, work, [4, 5], 0)
    new = published.published_pointer(work / "kept")
    for name in os.listdir(kept_old):
        if not (work / "kept" / name).exists():
            shutil.copytree(kept_old / name, work / "kept" / name) if (kept_old / name).is_dir() else \
                shutil.copy(kept_old / name, work / "kept" / name)
    assert sorted(os.listdir(work / "kept")) == sorted([published.pointer_name(1), v1, published.pointer_name(2), new.version])
    assert published.published_pointer(work / "kept") == new
    io.recover_leftovers(spark, str(work / "kept"))
    assert sorted(os.listdir(work / "kept")) == [published.pointer_name(2), new.version]


def test_outputs_of_one_job_from_different_runs_are_refused_together(spark, tmp_path, monkeypatch):
    """A run killed between its outputs' pointers: each output is a whole, checked version, but
    a reader of both stops with one line naming the job to run again."""
    work = tmp_path / "work"
    _publish(spark, work, [1, 2], 1)
    outputs = {"clean": str(work / "kept"), "clean_rejects": str(work / "rejects")}
    assert set(io.require_outputs(spark, outputs, "clean", "clean_rejects")) == {"clean", "clean_rejects"}
    real = io.write_text_file

    def dies_at_the_second_pointer(spark, path, text, **kw):
        if "rejects/_published-" in path:
            raise PipelineError("killed")
        real(spark, path, text, **kw)

    monkeypatch.setattr(io, "write_text_file", dies_at_the_second_pointer)
    with pytest.raises(PipelineError, match="killed"):
        _publish(spark, work, [4, 5], 0)
    monkeypatch.undo()
    assert sorted(r["photo_id"] for r in spark.read.parquet(str(output_path(work / "kept"))).collect()) == [4, 5]
    with pytest.raises(PipelineError, match="outputs.clean .* and outputs.clean_rejects .* come from different runs "
                                            "of jobs/clean_metadata.py"):
        io.require_outputs(spark, outputs, "clean", "clean_rejects")
    assert len([n for n in os.listdir(work / "rejects") if published.is_version(n)]) == 1   # its new version went


def test_single_existing_refuses_two_candidates(spark, tmp_path):
    plain, packed = tmp_path / "yfcc100m_dataset", tmp_path / "yfcc100m_dataset.bz2"
    with pytest.raises(PipelineError, match="none of"):
        io.single_existing(spark, [str(plain), str(packed)], "clean.dataset")
    packed.write_bytes(b"")
    assert io.single_existing(spark, [str(plain), str(packed)], "clean.dataset") == str(packed)
    plain.write_text("")
    with pytest.raises(PipelineError) as err:
        io.single_existing(spark, [str(plain), str(packed)], "clean.dataset")
    assert str(plain) in str(err.value) and str(packed) in str(err.value)
    assert "clean.dataset=<path>" in str(err.value)
    assert io.single_existing(spark, str(plain), "clean.dataset") == str(plain)   # one explicit path


def test_a_path_qualifies_to_one_spelling_whatever_its_form(spark, tmp_path):
    """Relative (to the driver's folder), absolute and file: forms of one folder give the same URI,
    spelled as Hadoop lists the files below it, so executor-side URIs compare equal."""
    import os

    folder = tmp_path / "x"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "f.parquet").write_bytes(b"x")
    forms = [str(folder), os.path.relpath(folder, os.getcwd()), f"file:{folder}", f"file://{folder}"]
    assert {io.qualify(spark, p) for p in forms} == {f"file://{folder}"}
    assert io.list_files(spark, os.path.relpath(folder, os.getcwd())) == [f"file://{folder}/a/f.parquet"]


def test_head_lines_of_plain_and_bz2_files(spark, tmp_path):
    """The first lines of a file, decompressed when it is .bz2, with any line end; fewer when short."""
    import bz2

    text = "a\tb\nc\r\nd\re\n"
    (tmp_path / "plain").write_text(text, newline="")
    (tmp_path / "packed.bz2").write_bytes(bz2.compress(text.encode()))
    for name in ("plain", "packed.bz2"):
        assert io.head_lines(spark, str(tmp_path / name), 3) == ["a\tb", "c", "d"]
        assert io.head_lines(spark, str(tmp_path / name), 10) == ["a\tb", "c", "d", "e"]


def test_every_output_names_the_job_that_writes_it(tmp_path):
    """A job whose input is missing names the job to run first: every output of conf/pipeline.yaml
    has its writer in pipeline.io.PRODUCED_BY, and each named job exists."""
    outputs = set(load_config([f"paths.root_dir={tmp_path}"]).outputs)
    assert set(io.PRODUCED_BY) == outputs
    assert all((ROOT / "jobs" / f"{job}.py").is_file() for job in io.PRODUCED_BY.values())


def test_input_bytes_counts_data_files_with_their_expansion(spark, tmp_path):
    """What spark.shuffle_partitions=auto sizes shuffles by: data files only (no hidden or ``_``
    names), compressed text counted 4x and Parquet 2x, missing paths 0; the same files list_files lists."""
    (tmp_path / "a.txt").write_bytes(b"x" * 1000)
    (tmp_path / "b.bz2").write_bytes(b"y" * 100)
    (tmp_path / "_SUCCESS").write_bytes(b"z" * 50)
    (tmp_path / ".a.crc").write_bytes(b"z" * 50)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.parquet").write_bytes(b"w" * 10)
    assert io.input_bytes(spark, [str(tmp_path), str(tmp_path / "missing")]) == 1000 + 4 * 100 + 2 * 10
    assert io.input_bytes(spark, [str(tmp_path / "a.txt")]) == 1000
    assert [Path(u).name for u in io.list_files(spark, str(tmp_path))] == ["a.txt", "b.bz2", "c.parquet"]


def test_distinct_columns_are_written_without_a_dictionary(spark, tmp_path):
    import pyarrow.parquet as pq

    # Repeated values, so that Parquet would keep a dictionary for each column unless told not to.
    rows = [(i, ["nyc", "cat"][i % 2], ["nyc", "cat"][i % 2]) for i in range(5000)]
    df = spark.createDataFrame(rows, "photo_id long, download_url string, town string")
    with io.staged_outputs(spark) as staged:
        staged.write_parquet(df, str(tmp_path / "t"), partitions=1, sort_by=["photo_id"],
                             distinct_columns=["photo_id", "download_url"])
    folder = output_path(tmp_path / "t")
    meta = pq.ParquetFile(next(folder.glob("*.parquet"))).metadata.row_group(0)
    chunks = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert not chunks["download_url"].has_dictionary_page
    assert chunks["town"].has_dictionary_page                 # the same values, not listed: a dictionary
    assert spark.read.parquet(str(folder)).orderBy("photo_id").collect() == df.orderBy("photo_id").collect()
