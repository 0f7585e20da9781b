"""training/launch.py: the launcher read from the environment each one sets, and the trainer
settings that follow (devices and nodes from torchrun/srun, contradictions named); the global
batch split; the loader's worker count; the flip applied on the device equal to a CPU mirror."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers.shards import shards_fixture

from training.data.images import to_batch
from training.data.plan import per_rank_batch
from training.data.shards import ShardStream, loader_workers
from training.errors import SetupError
from training.launch import Launch, detect, trainer_overrides

TORCHRUN = {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8",
            "GROUP_RANK": "0"}
SRUN = {"SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2", "SLURM_PROCID": "9",
        "SLURM_JOB_NAME": "train"}


def test_the_launcher_is_read_from_what_it_sets():
    assert detect(TORCHRUN) == Launch("torchrun", 2, 8)
    assert detect(SRUN) == Launch("srun", 2, 8)
    assert detect({**SRUN, "SLURM_NTASKS_PER_NODE": "8(x2)"}) == Launch("srun", 2, 8)
    assert detect({**SRUN, "SLURM_JOB_NAME": "interactive"}) == Launch("lightning")   # an allocation, not srun
    assert detect({"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}) == Launch("lightning")
    assert detect({}).world is None
    with pytest.raises(SetupError, match="--ntasks-per-node"):
        detect({"SLURM_NTASKS": "16", "SLURM_JOB_NAME": "train"})
    with pytest.raises(SetupError, match="WORLD_SIZE=15 is not a multiple of LOCAL_WORLD_SIZE=8"):
        detect({**TORCHRUN, "WORLD_SIZE": "15"})


def test_devices_and_nodes_come_from_torchrun_and_srun_or_the_run_stops_naming_them():
    open_ = {"accelerator": "gpu", "devices": "auto", "num_nodes": None, "strategy": "ddp", "precision": None}
    got = trainer_overrides(open_, Launch("torchrun", 2, 8), cuda=True, bf16=True)
    assert got == {"devices": 8, "num_nodes": 2, "benchmark": True, "precision": "bf16-mixed"}
    stated = {**open_, "devices": 8, "num_nodes": 2, "precision": "32-true", "deterministic": True}
    assert trainer_overrides(stated, Launch("srun", 2, 8), cuda=True, bf16=True) == {"devices": 8, "num_nodes": 2}
    # The review's failing launch: one torchrun process per node, Lightning told 8 devices.
    with pytest.raises(SetupError, match=r"trainer.devices=8, but torchrun started 1 process\(es\) per node.*"
                                         r"--nproc_per_node=8"):
        trainer_overrides({**open_, "devices": 8}, Launch("torchrun", 2, 1), cuda=True, bf16=True)
    with pytest.raises(SetupError, match=r"trainer.num_nodes=4, but srun started 2 node\(s\) \(--nodes=2\)"):
        trainer_overrides({**open_, "num_nodes": 4}, Launch("srun", 2, 8), cuda=True, bf16=True)
    # Lightning's own launcher: what the config says, ddp when there are several processes.
    cpu = {"accelerator": "cpu", "devices": 2, "num_nodes": 2, "strategy": "auto", "precision": None}
    assert trainer_overrides(cpu, Launch("lightning"), cuda=False, bf16=False) == {"strategy": "ddp",
                                                                                    "precision": "32-true"}
    old_gpu = trainer_overrides({**open_, "devices": 1}, Launch("lightning"), cuda=True, bf16=False)
    assert old_gpu["precision"] == "16-mixed" and old_gpu["num_nodes"] == 1


def test_the_global_batch_splits_evenly_or_stops():
    assert per_rank_batch(1024, 8) == 128 and per_rank_batch(1024, 1) == 1024
    with pytest.raises(SetupError, match=r"data.batch_size=1000 \(the global batch\) is not divisible by the 16 "
                                         "ranks: use a multiple of 16"):
        per_rank_batch(1000, 16)


def test_loader_workers_share_the_cores_of_a_node():
    assert loader_workers(3, local_ranks=8, cores=64) == 3
    assert loader_workers(None, local_ranks=8, cores=64) == 7       # 8 cores a rank, one for the rank itself
    assert loader_workers(None, local_ranks=8, cores=8) == 1


shards = shards_fixture(rows={"train": 24, "val": 8, "test": 8}, row_group_size=8, files_per_split=1)


def test_batches_leave_as_uint8_nhwc_and_the_device_flip_mirrors_them(shards):
    """The worker's crop is the training crop; the flip it draws, applied by the model on the
    device, mirrors exactly the rows it names (what the CPU did before, on a copy of the batch)."""
    import pyarrow.parquet as pq

    from training.models.mcc import MCC

    stream = ShardStream(shards, "train", batch_size=12, crop=24, train=True, shuffle=True, seed=3)
    batch = next(iter(stream))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (12, 24, 24, 3)
    assert batch["image"].is_contiguous() and batch["flip"].dtype == torch.bool
    assert 0 < int(batch["flip"].sum()) < 12                          # the seed draws both
    rows = pq.read_table(next((shards / "val").glob("*.parquet")))
    centre = to_batch(rows, resize=None, crop=24, train=False, seed=0, epoch=0, gen=None)
    assert "flip" not in centre
    # The batch's pixels are the image's: PIL's own decode, centre-cropped.
    from PIL import Image
    im = Image.open(io.BytesIO(rows.column("image")[0].as_py())).convert("RGB")
    w, h = im.size
    x, y = (w - 24) // 2, (h - 24) // 2
    assert np.array_equal(centre["image"][0, ..., :3].numpy(), np.asarray(im)[y:y + 24, x:x + 24])

    model = MCC(num_tags=10, backbone={"name": "resnet18", "pretrained": False}, optimizer=None,
                channels_last=True)
    seen = []

    class Record(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.mean(dim=(2, 3))

    model.backbone = Record()
    model.features(batch["image"], batch["flip"])
    x = seen[0]
    assert x.is_contiguous(memory_format=torch.channels_last)       # no copy made it so
    rgb = batch["image"].numpy()[..., :3]
    mirrored = np.where(batch["flip"].numpy()[:, None, None, None], rgb[:, :, ::-1], rgb)
    want = (torch.from_numpy(mirrored.copy()).permute(0, 3, 1, 2).float() - model.mean) / model.std
    assert torch.equal(x, want)


# --- ranks agree on the input files (2 real processes, gloo) --------------------------------------------

def _agree_main(rank: int, world: int, port: int, dirs: list, on_bad_file: str, out: str) -> None:
    import json
    import os

    import torch.distributed as dist

    from training.data.shards import ShardDataModule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = ShardDataModule(dirs[rank], batch_size=8, crop=24, on_bad_file=on_bad_file)
        dm.check_files(defer=True)            # rank 1's copy has a truncated file; rank 0's is whole
        try:
            dm.setup("fit")
            result = {"files": [f.path for info in dm.manifest.splits.values() for f in info.files],
                      "bad": [b.problem for b in dm.bad_files], "batches": len(dm.stream("train", True))}
        except SetupError as exc:
            result = {"error": str(exc)}
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("on_bad_file", ["skip", "error"])
def test_a_file_bad_on_one_rank_only_gives_one_plan_or_one_error(tmp_path, shards, on_bad_file):
    """Each rank reads its own copy of the shards (two nodes' views of one folder); on rank 1 a
    file is cut short. skip: both ranks leave it out and plan the same batches; error: both stop
    with the same line, naming the file and the rank that saw it. Never a hang."""
    import json
    import shutil

    import torch.multiprocessing as mp
    from helpers.servers import free_port

    copies = [tmp_path / "node0", tmp_path / "node1"]
    for c in copies:
        shutil.copytree(shards, c)
    victim = next((copies[1] / "train").glob("*.parquet"))
    victim.write_bytes(victim.read_bytes()[:200])
    out = str(tmp_path / "agree")
    mp.start_processes(_agree_main, args=(2, free_port(), [str(c) for c in copies], on_bad_file, out), nprocs=2,
                       join=True, start_method="spawn")
    results = [json.loads(open(f"{out}.{r}").read()) for r in (0, 1)]
    if on_bad_file == "error":
        assert results[0]["error"] == results[1]["error"].replace(str(copies[1]), str(copies[0]))
        assert victim.name in results[1]["error"] and "(on rank 1 of 2 only)" in results[1]["error"]
    else:
        assert results[0]["files"] == results[1]["files"] and f"train/{victim.name}" not in results[0]["files"]
        assert results[0]["batches"] == results[1]["batches"]
        assert all("on rank 1 of 2 only" in p for p in results[0]["bad"])
