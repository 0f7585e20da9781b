"""The three multi-node launches of docs/gpu.md, on CPU processes with gloo on loopback: two
"nodes" of two processes each, started by torchrun, by srun (simulated: the processes get the
environment srun gives them), and by Lightning's own launcher (NODE_RANK, MASTER_ADDR). Each
trains MCC (fit, export, evaluation) and LocSens (fit, exact evaluation); every training row is
read once per epoch over the four ranks, and the metrics equal one process's evaluation of the
same checkpoint. A node whose run folder is not the others' stops, every rank with one line."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.config import CPU, TINY_IMAGE, TINY_LOCSENS, paths
from helpers.embeddings import write_embeddings
from helpers.shards import shards_fixture

ROOT = Path(__file__).resolve().parents[2]
NODES, PER_NODE = 2, 2
WORLD = NODES * PER_NODE

shards = shards_fixture(rows={"train": 64, "val": 24, "test": 40}, row_group_size=8, files_per_split=2)

MCC = ["+experiment=mcc", *TINY_IMAGE, *CPU, "data.batch_size=16", "trainer.max_epochs=2", "torch_threads=1"]
LOCSENS = ["+experiment=locsens_raw", *TINY_LOCSENS, *CPU, "data.batch_size=40", "trainer.max_epochs=2",
           "torch_threads=1"]
#: DDP on CPU processes (gloo); devices and nodes are the launcher's, or stated for Lightning's.
DDP = ["trainer=ddp", "trainer.accelerator=cpu"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC", "LOCAL_", "NODE_RANK"))}
    return {**env, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "MASTER_ADDR": "127.0.0.1", **extra}


def _launch(kind: str, args: list[str], node_args: dict[int, list[str]], log_dir: Path, nodes: int = NODES,
            per_node: int = PER_NODE) -> list[subprocess.Popen]:
    """Start the run's processes as ``kind`` would on two nodes: torchrun (one per node),
    srun (one per task, with SLURM's variables), lightning (one per node)."""
    port = str(_port())
    procs = []
    log_dir.mkdir(parents=True, exist_ok=True)

    def start(argv: list[str], env: dict[str, str], name: str) -> None:
        out = open(log_dir / f"{name}.log", "w")
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    for node in range(nodes):
        extra = args + node_args.get(node, [])
        if kind == "torchrun":
            start([sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={per_node}",
                   f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                   "-m", "training.run", *extra], _env(), f"node{node}")
        elif kind == "srun":
            for local in range(per_node):
                rank = node * per_node + local
                start([sys.executable, "-m", "training.run", *extra],
                      _env(SLURM_NTASKS=str(nodes * per_node), SLURM_NTASKS_PER_NODE=str(per_node), SLURM_NNODES=str(nodes),
                           SLURM_PROCID=str(rank), SLURM_LOCALID=str(local), SLURM_NODEID=str(node),
                           SLURM_JOB_NAME="locsens-test", SLURM_JOB_ID="4242", SLURM_NODELIST="127.0.0.1",
                           MASTER_PORT=port), f"node{node}-task{local}")
        else:
            start([sys.executable, "-m", "training.run", *extra, f"trainer.devices={per_node}",
                   f"trainer.num_nodes={nodes}"], _env(NODE_RANK=str(node), MASTER_PORT=port), f"node{node}")
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 420) -> list[int]:
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    return codes


def _logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(log_dir.glob("*.log")))


def _run(kind: str, args: list[str], log_dir: Path) -> None:
    procs = _launch(kind, args, {}, log_dir)
    codes = _wait(procs)
    assert codes == [0] * len(procs), _logs(log_dir)


def _one_process(args: list[str]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "training.run", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _seen_once(record: Path, ids: np.ndarray, epochs: int) -> None:
    for epoch in range(epochs):
        parts = [json.loads((record / f"ids-e{epoch}-r{r}.json").read_text()) for r in range(WORLD)]
        seen = [i for p in parts for i in p["ids"]]
        assert sorted(seen) == sorted(ids.tolist()), f"epoch {epoch}"
        assert len({p["batches"] for p in parts}) == 1        # every rank the same number of steps


def _evaluated(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(("tagging/", "retrieval/"))}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchrun", "srun", "lightning"])
def test_two_nodes_of_two_processes_train_mcc_and_locsens_like_one_process(tmp_path, shards, kind):
    root = tmp_path / "run"
    record = tmp_path / "record"
    record.mkdir()
    recorder = ["+callbacks.record._target_=helpers.callbacks.RecordIds", f"+callbacks.record.out_dir={record}"]

    # MCC: fit (16 images a step = 4 per rank), export (one file per rank and split), evaluation on rank 0.
    mcc = [*MCC, *paths(root, shards=shards)]
    _run(kind, [*mcc, *DDP, *recorder], tmp_path / "logs-mcc")
    train_ids = np.concatenate([pq.read_table(p, columns=["photo_id"]).column(0).to_numpy()
                                for p in sorted((shards / "train").glob("*.parquet"))])
    _seen_once(record, train_ids, epochs=2)
    run_dir = root / "outputs" / "mcc"
    ddp = json.loads((run_dir / "metrics.json").read_text())
    export = json.loads((run_dir / "embeddings" / "manifest.json").read_text())
    assert len(export["splits"]["test"]["files"]) == WORLD and export["splits"]["train"]["rows"] == train_ids.size
    _one_process([*mcc, "train=false", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"])
    one = json.loads((run_dir / "metrics.json").read_text())
    assert len(_evaluated(one)) > 5 and _evaluated(ddp) == pytest.approx(_evaluated(one))

    # LocSens on MCC's export: fit (a global batch of 40 = 10 per rank), exact evaluation on all four ranks.
    for stale in record.glob("*.json"):
        stale.unlink()
    locsens = [*LOCSENS, *paths(root, embeddings=run_dir / "embeddings"), f"data.shards_dir={shards}",
               "model.input_dim=300"]           # MCC's embedding width
    _run(kind, [*locsens, *DDP, *recorder], tmp_path / "logs-locsens")
    _seen_once(record, np.array(pq.read_table(run_dir / "embeddings" / "images" / "train").column("photo_id")), 2)
    locsens_dir = root / "outputs" / "locsens_raw"
    ddp = json.loads((locsens_dir / "metrics.json").read_text())
    assert ddp["eval/ranks"] == WORLD
    _one_process([*locsens, "train=false", f"ckpt_path={locsens_dir / 'checkpoints' / 'best.ckpt'}"])
    one = json.loads((locsens_dir / "metrics.json").read_text())
    assert one["eval/ranks"] == 1 and len(_evaluated(one)) > 5
    assert _evaluated(ddp) == pytest.approx(_evaluated(one))


@pytest.mark.slow
def test_a_node_with_its_own_run_folder_stops_every_rank_with_one_line(tmp_path):
    """torchrun, two nodes of one process: the second node's run folder is a local one. Both ranks
    stop at setup, before training, naming the folder and the need for a shared filesystem."""
    emb = write_embeddings(tmp_path / "emb")
    args = [*LOCSENS, *paths(tmp_path, embeddings=emb), *DDP, f"run_dir={tmp_path / 'common-run'}"]
    procs = _launch("torchrun", args, {1: [f"run_dir={tmp_path / 'local-to-node1'}"]}, tmp_path / "logs", per_node=1)
    codes = _wait(procs, timeout=300)
    logs = _logs(tmp_path / "logs")
    assert all(c != 0 for c in codes), logs
    errors = [line for line in logs.splitlines() if line.startswith("error: run_dir=")]
    assert len(errors) == 2, logs                  # one line from each rank
    assert len(set(errors)) == 1 and "local-to-node1" in errors[0] and "filesystem all nodes share" in errors[0]
    assert "training/" not in logs              # no traceback through the project's code (torchrun prints its own)
    assert not (tmp_path / "common-run" / "checkpoints").exists()     # nothing trained
