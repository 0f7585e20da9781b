"""MCC, the multi-class model (docs/method.md): backbone -> 300 (linear) -> V-way softmax.

Trained with cross-entropy on ONE tag drawn at random from the image's tags each time the image
is loaded (the loader's ``tag``). The image embedding is the 300-d layer; tag i's embedding is
row i of the 300 -> V weight matrix; both are compared by cosine similarity. The paper's best
location-agnostic model and the source of LocSens's inputs.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from training.models.base import TagModel
from training.models.family import EMBEDDINGS, SERVES_IMAGE, Family


class MCC(TagModel):
    family = Family(
        name="mcc", label="MCC", order=20, exports=EMBEDDINGS, serves=SERVES_IMAGE, registered={"tagging": "mcc"},
        description="MCC: an image model with a softmax over the vocabulary (one of the image's tags drawn each "
                    "time); its image and tag embeddings are LocSens's input. A JPEG in, its top tags by cosine out.")
    score = "cosine"

    def __init__(self, num_tags: int, embedding_dim: int = 300, **kwargs):
        super().__init__(num_tags, **kwargs)
        self.save_hyperparameters(logger=False, ignore=["optimizer", "scheduler"])
        self.embedding = nn.Linear(self.feature_dim, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_tags)

    def embed(self, images, flip=None):
        return self.embedding(self.features(images, flip))

    def compute_loss(self, batch):
        emb = self.embed(batch["image"], batch.get("flip"))
        return F.cross_entropy(self.classifier(emb).float(), batch["tag"]), emb

    def tag_embeddings(self):
        return self.classifier.weight
