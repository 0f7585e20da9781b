"""What every model here does the same way around its training loop: tell the streaming loaders
the epoch (Lightning sets epochs on samplers, not on iterable datasets, and the streams plan by
epoch), build its optimizer and per-step learning-rate schedule from the configured factories,
and say what it is (its :class:`~training.models.family.Family`, tasks and location variant), also
in its checkpoints, so that whatever loads one knows the class without guessing.

A checkpoint saved inside an epoch also holds the state of the random draws the training steps
make (torch's generators, and a model's own): the loader resumes at the next batch of the plan
(:class:`training.data.plan.PlannedLoader`), and the steps that follow draw the numbers the
uninterrupted run drew, so the weights come out the same."""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Optional

import pytorch_lightning as pl
import torch

from training.errors import SetupError

from training.models.family import TASKS, Family
from training.ranks import Ranks

#: The checkpoint entry naming the model's family (read by :func:`training.models.family_of_checkpoint`).
FAMILY_KEY = "locsens_family"
#: The checkpoint entry of a save inside an epoch: that epoch and the draws' states.
MID_EPOCH_KEY = "locsens_mid_epoch"


class StreamedModule(pl.LightningModule):
    """A LightningModule trained on :class:`training.data.plan.PlannedStream` loaders, with
    ``optimizer_factory`` and an optional ``scheduler_factory(optimizer, total_steps)``."""

    family: ClassVar[Family]
    optimizer_factory: Callable[..., Any]
    scheduler_factory: Optional[Callable[..., Any]]

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks (``training.models.family.TASKS``) this model was trained for."""
        return TASKS

    @property
    def variant(self) -> Optional[str]:
        """Its location variant (``family.variants``), None for a family without any."""
        return None

    _mid_epoch: Optional[dict[str, Any]] = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FAMILY_KEY] = self.family.name
        if self._trainer is not None and self.trainer.training:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
            if 0 < done < self.trainer.num_training_batches:
                # Every rank draws its own numbers: the checkpoint (written by rank 0) holds all of them.
                checkpoint[MID_EPOCH_KEY] = {"epoch": self.current_epoch,
                                             "draws": Ranks.current().all_gather(self.draw_states())}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._mid_epoch = checkpoint.get(MID_EPOCH_KEY)

    def draw_states(self) -> dict[str, Any]:
        """The states of the generators training steps draw from (dropout, a model's own draws)."""
        states: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def restore_draws(self, states: dict[str, Any]) -> None:
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    def start_epoch_draws(self) -> None:
        """Seed the model's own draws for the epoch (LocSens's generator); none here."""

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        for dl in (loader if isinstance(loader, (list, tuple)) else [loader]):
            dataset = getattr(dl, "dataset", None)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(self.current_epoch)
        self.start_epoch_draws()

    def on_train_start(self) -> None:
        """A run resumed inside an epoch: Lightning does not start that epoch again (no
        ``on_train_epoch_start``), so its draws are set up here, once the loader has started, and
        put back as they were at the checkpoint."""
        resumed, self._mid_epoch = self._mid_epoch, None
        if resumed is not None and resumed["epoch"] == self.current_epoch:
            draws = resumed["draws"]
            if len(draws) != self.trainer.world_size:    # (the loader stops such a resume first)
                raise SetupError(f"the checkpoint was saved inside epoch {self.current_epoch} by {len(draws)} "
                                 f"rank(s); this run has {self.trainer.world_size}")
            self.start_epoch_draws()
            self.restore_draws(draws[self.global_rank])

    def total_steps(self) -> int:
        """Optimizer steps of the whole fit, counted as Lightning's ``estimated_stepping_batches``
        counts them, but from the data module's plan: asking Lightning builds the training loader,
        and starts reading, before a checkpoint is restored, so a resumed run would not go on
        where it stopped."""
        trainer = self.trainer
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "train_batches"):
            return int(trainer.estimated_stepping_batches)
        if trainer.max_epochs == -1:
            return int(trainer.max_steps)
        batches, limit = dm.train_batches(trainer.world_size), trainer.limit_train_batches
        batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * limit)
        steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=self.total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
