"""MLC, the multi-label model (SPEC 3): backbone -> V logits, sigmoid + BCE over the multi-hot
target of all the image's tags (built on the device). The paper found it unstable.

Ranking uses the logits. To keep one export format for every model, the image embedding is the
backbone feature with a constant 1 appended and tag i's embedding is [w_i, b_i], so that their
dot product is exactly logit i (``score = "dot"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.module import TagModel, multi_hot


class MLC(TagModel):
    score = "dot"

    def __init__(self, num_tags: int, **kwargs):
        super().__init__(num_tags, **kwargs)
        self.save_hyperparameters(logger=False)
        self.classifier = nn.Linear(self.feature_dim, num_tags)

    def embed(self, images):
        f = self.features(images)
        return torch.cat([f, torch.ones_like(f[:, :1])], dim=1)

    def compute_loss(self, batch):
        f = self.features(batch["image"])
        logits = self.classifier(f).float()
        target = multi_hot(batch["tag_values"], batch["tag_offsets"], self.num_tags)
        return F.binary_cross_entropy_with_logits(logits, target), torch.cat([f, torch.ones_like(f[:, :1])], 1)

    def tag_embeddings(self):
        return torch.cat([self.classifier.weight, self.classifier.bias[:, None]], dim=1)
