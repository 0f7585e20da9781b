"""What MCC, MLC and HER share: a torchvision backbone, device-side normalisation, the optimiser
and schedule from config, validation loss and A@1, and the prediction step used for export.

A subclass defines :meth:`TagModel.compute_loss` (loss and the exported image embedding),
:meth:`TagModel.tag_embeddings` and :attr:`TagModel.score` (how the two are compared:
``cosine`` or ``dot``). Evaluation ranks with exactly that score.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from training.models.backbone import build_backbone
from training.models.streamed import StreamedModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def multi_hot(values: torch.Tensor, offsets: torch.Tensor, num_tags: int,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, V) 0/1 matrix from CSR tags (built on the device, never shipped by the loader)."""
    batch = offsets.numel() - 1
    rows = torch.repeat_interleave(torch.arange(batch, device=values.device), offsets.diff())
    out = torch.zeros(batch, num_tags, dtype=dtype, device=values.device)
    out[rows, values] = 1
    return out


def score(image_emb: torch.Tensor, tag_emb: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, V) image-tag scores: cosine similarity or plain dot product."""
    if kind == "cosine":
        return F.normalize(image_emb.float(), dim=-1) @ F.normalize(tag_emb.float(), dim=-1).T
    if kind == "dot":
        return image_emb.float() @ tag_emb.float().T
    raise ValueError(f"unknown score {kind!r}")


class TagModel(StreamedModule, abc.ABC):
    score: str = "cosine"

    def __init__(self, num_tags: int, backbone: Mapping[str, Any],
                 optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Optional[Callable[..., Any]] = None, compile: bool = False,
                 channels_last: Optional[bool] = None):
        super().__init__()
        self.num_tags = num_tags
        self.backbone, self.feature_dim, self.backbone_weights = build_backbone(**dict(backbone))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.channels_last = bool(channels_last)
        self._channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self._compile = compile

    def setup(self, stage: str) -> None:
        """``channels_last`` null: on for a GPU run (the layout its convolutions are fastest in, and
        the loader's batches already are), off on the CPU. ``compile``: the backbone through
        torch.compile for fitting (in place: the checkpoint's keys stay those of the plain module)."""
        if self._channels_last is None and self._trainer is not None:
            self.channels_last = self.trainer.strategy.root_device.type == "cuda"
            if self.channels_last:
                self.backbone = self.backbone.to(memory_format=torch.channels_last)
        if self._compile and stage == "fit":
            self.backbone.compile()

    # --- shared pieces --------------------------------------------------------------------------
    def features(self, images: torch.Tensor, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB as the loader ships it (or (B, H, W, 4) with a padding byte) ->
        backbone features (B, feature_dim). ``flip`` (B,) bool mirrors those images (training's
        augmentation, applied here on the device). The NCHW view of NHWC memory is already
        channels_last: no copy makes it so."""
        images = images[..., :3]
        if flip is not None:
            images = torch.where(flip[:, None, None, None], images.flip(2), images)
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self.backbone(x)

    @abc.abstractmethod
    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, exported image embeddings) for a batch."""

    @abc.abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The exported image embedding."""

    @abc.abstractmethod
    def tag_embeddings(self) -> torch.Tensor:
        """(V, d) exported tag embeddings, comparable with :meth:`embed` under :attr:`score`."""

    # --- loops ----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        loss, _ = self.compute_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, emb = self.compute_loss(batch)
        n = batch["image"].shape[0]
        ranked = score(emb, self.tag_embeddings(), self.score).topk(min(10, self.num_tags), dim=1).indices
        truth = multi_hot(batch["tag_values"], batch["tag_offsets"], self.num_tags, torch.bool)
        hits = truth.gather(1, ranked)                         # (n, 10): is the i-th best tag one of the image's
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("val/A_at_1", 100.0 * hits[:, 0].float().mean(), sync_dist=True, batch_size=n)
        self.log("val/A_at_10", 100.0 * hits.any(dim=1).float().mean(), sync_dist=True, batch_size=n)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return {"photo_id": batch["photo_id"], "embedding": self.embed(batch["image"]).float(),
                "latitude": batch["latitude"], "longitude": batch["longitude"],
                "tag_values": batch["tag_values"], "tag_offsets": batch["tag_offsets"]}
