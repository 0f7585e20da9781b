"""What every model here does the same way around its training loop: tell the streaming loaders
the epoch (Lightning sets epochs on samplers, not on iterable datasets, and the streams plan by
epoch), build its optimizer and per-step learning-rate schedule from the configured factories,
and say what it is (its :class:`~training.models.family.Family`, tasks and location variant), also
in its checkpoints, so that whatever loads one knows the class without guessing."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import pytorch_lightning as pl

from training.models.family import TASKS, Family

#: The checkpoint entry naming the model's family (read by :func:`training.models.family_of_checkpoint`).
FAMILY_KEY = "locsens_family"


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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FAMILY_KEY] = self.family.name

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        for dl in (loader if isinstance(loader, (list, tuple)) else [loader]):
            dataset = getattr(dl, "dataset", None)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer,
                                           total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
