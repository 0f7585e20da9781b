"""MLC, the multi-label model (docs/method.md): backbone -> V logits, sigmoid + BCE over the multi-hot
target of all the image's tags (built on the device). The paper found it unstable.

``reduction="sum"`` sums the loss over the V tags and averages over images; the element mean
(``"mean"``) divides every tag's gradient by V and, with 10^4-10^5 tags, barely moves the
weights at SGD learning rates (on the embedded sample it stayed below the frequency prior).

Ranking uses the logits. To keep one export format for every model, the image embedding is the
backbone feature with a constant 1 appended and tag i's embedding is [w_i, b_i], so that their
dot product is exactly logit i (``score = "dot"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import TagModel, multi_hot
from training.models.family import EMBEDDINGS, Family


class MLC(TagModel):
    family = Family(name="mlc", label="MLC", order=10, exports=EMBEDDINGS,
                    description="MLC: an image model with a sigmoid per vocabulary tag over all the image's tags.")
    score = "dot"

    def __init__(self, num_tags: int, reduction: str = "sum", **kwargs):
        super().__init__(num_tags, **kwargs)
        self.save_hyperparameters(logger=False, ignore=["optimizer", "scheduler"])
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction {reduction!r}: 'sum' (over tags, mean over images) or 'mean'")
        self.reduction = reduction
        self.classifier = nn.Linear(self.feature_dim, num_tags)

    def embed(self, images):
        f = self.features(images)
        return torch.cat([f, torch.ones_like(f[:, :1])], dim=1)

    def compute_loss(self, batch):
        f = self.features(batch["image"], batch.get("flip"))
        logits = self.classifier(f).float()
        target = multi_hot(batch["tag_values"], batch["tag_offsets"], self.num_tags)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction=self.reduction)
        if self.reduction == "sum":
            loss = loss / logits.shape[0]
        return loss, torch.cat([f, torch.ones_like(f[:, :1])], 1)

    def tag_embeddings(self):
        return torch.cat([self.classifier.weight, self.classifier.bias[:, None]], dim=1)
