"""HER, hashtag embedding regression (docs/method.md): backbone -> 300, cosine loss to the mean word
vector of the image's tags.

Word vectors come from :func:`training.data.word_vectors.build_word_vectors` (GloVe when configured,
else PPMI + SVD of tag co-occurrence in the training split). They are a buffer of the model, saved
in its checkpoints; tags and images are ranked by cosine to them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import TagModel
from training.models.family import EMBEDDINGS, Family


class HER(TagModel):
    family = Family(name="her", label="HER", order=30, exports=EMBEDDINGS,
                    description="HER: an image model regressing the mean word vector of the image's tags.")
    score = "cosine"

    def __init__(self, num_tags: int, word_vectors: Optional[torch.Tensor] = None,
                 embedding_dim: int = 300, normalize_word_vectors: bool = True, **kwargs):
        super().__init__(num_tags, **kwargs)
        self.save_hyperparameters(logger=False, ignore=["word_vectors", "optimizer", "scheduler"])
        if word_vectors is None:  # restored from a checkpoint's state dict
            word_vectors = torch.zeros(num_tags, embedding_dim)
        word_vectors = torch.as_tensor(word_vectors, dtype=torch.float32)
        if word_vectors.shape != (num_tags, embedding_dim):
            raise ValueError(f"word vectors {tuple(word_vectors.shape)} != ({num_tags}, {embedding_dim})")
        if normalize_word_vectors:
            word_vectors = F.normalize(word_vectors, dim=1)
        self.register_buffer("word_vectors", word_vectors)
        self.head = nn.Linear(self.feature_dim, embedding_dim)

    def embed(self, images, flip=None):
        return self.head(self.features(images, flip))

    def compute_loss(self, batch):
        emb = self.embed(batch["image"], batch.get("flip"))
        target = F.embedding_bag(batch["tag_values"], self.word_vectors, batch["tag_offsets"][:-1],
                                 mode="mean")
        return (1 - F.cosine_similarity(emb.float(), target, dim=1)).mean(), emb

    def tag_embeddings(self):
        return self.word_vectors
