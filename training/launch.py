"""Who started this run's processes, and the trainer settings that follow from it.

A run on several GPUs or nodes is started one of three ways (docs/gpu.md gives the commands):

- ``torchrun`` starts every process itself (``--nproc_per_node`` on each of ``--nnodes`` nodes);
- ``srun`` does the same under SLURM (``--ntasks-per-node`` on each of ``--nodes``);
- Lightning's own launcher: one command per node (``NODE_RANK``, ``MASTER_ADDR``), which
  re-runs itself once per device.

Under the first two, the processes already exist, and Lightning stops unless ``trainer.devices``
is the processes per node and ``trainer.num_nodes`` the nodes. :func:`trainer_overrides` takes
both from the launcher when the config leaves them open (``auto``/null), and stops with one line
naming the setting when the config contradicts the launcher, instead of Lightning's message
deep in ``fit``. Pure: the environment and CUDA's answers are arguments.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from training.errors import SetupError

#: Job names under which SLURM's variables describe an allocation, not processes srun started
#: (Lightning's rule: ``srun --job-name=interactive`` hands the launch to another launcher).
_SLURM_INTERACTIVE = ("bash", "interactive")


@dataclass(frozen=True)
class Launch:
    """How the processes of this run were started: ``launcher`` is ``torchrun``, ``srun`` or
    ``lightning`` (Lightning starts the processes of its node itself); ``nodes`` and ``per_node``
    are known for the first two only."""

    launcher: str
    nodes: Optional[int] = None
    per_node: Optional[int] = None

    @property
    def started_outside(self) -> bool:
        return self.launcher != "lightning"

    @property
    def world(self) -> Optional[int]:
        return self.nodes * self.per_node if self.started_outside else None


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    match = re.match(r"^(\d+)", value)        # SLURM writes e.g. "8(x2)" for uneven allocations
    if not match:
        raise SetupError(f"environment variable {name}={value!r}: expected a number (set by the launcher)")
    return int(match.group(1))


def detect(env: Mapping[str, str]) -> Launch:
    """The launcher of this process, from the variables each one sets."""
    if "TORCHELASTIC_RUN_ID" in env:
        per_node = _int(env, "LOCAL_WORLD_SIZE")
        world = _int(env, "WORLD_SIZE")
        if world % per_node:
            raise SetupError(f"torchrun: WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={per_node}: start "
                             "the same --nproc_per_node on every node")
        return Launch("torchrun", world // per_node, per_node)
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in _SLURM_INTERACTIVE:
        tasks = _int(env, "SLURM_NTASKS")
        nodes = _int(env, "SLURM_NNODES") if "SLURM_NNODES" in env else 1
        if "SLURM_NTASKS_PER_NODE" in env:
            per_node = _int(env, "SLURM_NTASKS_PER_NODE")
        elif tasks == 1:
            per_node = 1
        else:
            raise SetupError(f"srun: SLURM_NTASKS={tasks} without --ntasks-per-node: start one task per device with "
                             "srun --ntasks-per-node=<devices per node>")
        return Launch("srun", nodes, per_node)
    return Launch("lightning")


def _open(value: Any) -> bool:
    return value is None or value == "auto"


def trainer_overrides(trainer: Mapping[str, Any], launch: Launch, *, cuda: bool, bf16: bool) -> dict[str, Any]:
    """The trainer settings that the config leaves open, settled for this launch and machine:
    ``devices`` and ``num_nodes`` from torchrun/srun, ``strategy`` ddp when there are several
    processes, ``precision`` bf16-mixed on a GPU that has it (32-true elsewhere), ``benchmark``
    (cuDNN autotuning) on GPUs unless the run is deterministic. A setting the
    config states is kept, unless it contradicts the launcher: then the run stops naming it."""
    out: dict[str, Any] = {}
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes")
    if launch.started_outside:
        how = {"torchrun": ("--nproc_per_node", "--nnodes"), "srun": ("--ntasks-per-node", "--nodes")}[launch.launcher]
        if not _open(devices) and int(devices) != launch.per_node:
            raise SetupError(f"trainer.devices={devices}, but {launch.launcher} started {launch.per_node} process(es) "
                             f"per node: start one process per device ({launch.launcher} {how[0]}={devices}) or set "
                             f"trainer.devices={launch.per_node} (or auto)")
        if not _open(nodes) and int(nodes) != launch.nodes:
            raise SetupError(f"trainer.num_nodes={nodes}, but {launch.launcher} started {launch.nodes} node(s) "
                             f"({how[1]}={launch.nodes}): set trainer.num_nodes={launch.nodes} (or null)")
        out["devices"], out["num_nodes"] = launch.per_node, launch.nodes
    elif _open(nodes):
        out["num_nodes"] = 1
    several = (launch.world or 1) > 1 or int(out.get("num_nodes", nodes) or 1) > 1 or (
        not _open(devices) and not isinstance(devices, (list, str)) and int(devices) > 1)
    if _open(trainer.get("strategy")) and several:
        out["strategy"] = "ddp"
    if trainer.get("benchmark") is None and cuda and not trainer.get("deterministic"):
        out["benchmark"] = True             # cuDNN picks the fastest kernels for the (fixed) input size
    if trainer.get("precision") is None:
        gpu = trainer.get("accelerator") in ("gpu", "cuda", "auto") and cuda
        out["precision"] = "bf16-mixed" if gpu and bf16 else ("16-mixed" if gpu else "32-true")
    return out


def may_have_peers(trainer: Mapping[str, Any], launch: Launch, env: Mapping[str, str], gpus: int) -> bool:
    """Whether this process may be one of several in its run: then decisions every rank must share
    (which input files to leave out) wait until the processes have met."""
    if launch.started_outside:
        return (launch.world or 1) > 1
    if str(env.get("NODE_RANK", "0") or "0") != "0" or int(trainer.get("num_nodes") or 1) > 1:
        return True
    devices = trainer.get("devices")
    if str(trainer.get("strategy") or "").startswith(("ddp", "fsdp", "deepspeed")):
        return True
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if _open(devices) or str(devices) == "-1":
        return trainer.get("accelerator") in ("gpu", "cuda", "auto") and gpus > 1
    return int(devices) > 1
