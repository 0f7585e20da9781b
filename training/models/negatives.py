"""LocSens's positives and negatives (docs/method.md), drawn with tensor operations over a whole batch.

A positive is (image, one of its tags at random, its location). Each positive gets ``n`` negatives:
- ``tagging`` mode: each negative replaces either the image (with another image that lacks the
  tag) or the tag (with a random vocabulary tag the image lacks), chosen at random;
- ``retrieval`` mode: each negative replaces only the image, which keeps tag frequencies equal in
  positives and negatives.
Replacement images come from a *pool*: rows the loader samples from a shuffle buffer that spans
several row groups of the training set (``pool_tag_ids``), so that over training an image meets
most of the dataset as a negative, as with the authors' draws from the whole training set; without
a pool, from the other images of the batch. The location always stays the positive's (it belongs
to the query). Candidates are drawn several at a time and the first valid one kept; a slot with
no valid candidate is masked out of the loss (only possible when nearly every candidate shares the tag).

Tags arrive padded: ``tag_ids`` (B, T) with -1 after each image's tags.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from training.models.family import TASKS

#: Negatives are drawn for the task the model trains for.
MODES = TASKS


@dataclass
class Triplets:
    """Index form of a batch's triplets: images are rows of the batch, tags vocabulary indices."""

    pos_tag: torch.Tensor     # (B,)
    neg_image: torch.Tensor   # (B, N) rows of the batch, then of the pool (B + pool row)
    neg_tag: torch.Tensor     # (B, N) vocabulary indices
    valid: torch.Tensor       # (B, N) bool


def draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where a draw is made: on its generator's device (a GPU's own generator in training on a GPU:
    no host-to-device copy), else on ``device``. On the CPU the draws are those of a CPU generator,
    as before."""
    return generator.device if generator is not None else device


def draw_positive_tags(tag_ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One of each image's tags, uniformly at random."""
    counts = (tag_ids >= 0).sum(dim=1)
    # Checked where the tags are (a GPU raises it asynchronously): no wait for the host to read a flag.
    torch._assert_async((counts > 0).all(), "every image needs at least one tag")
    u = torch.rand(tag_ids.shape[0], generator=generator, device=draw_device(generator, tag_ids.device))
    u = u.to(tag_ids.device)
    pick = (u * counts).long().clamp(max=tag_ids.shape[1] - 1)
    return tag_ids.gather(1, pick[:, None]).squeeze(1)


def has_tag(tag_ids: torch.Tensor, rows: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Does batch image ``rows[...]`` carry tag ``tags[...]`` (same shapes)."""
    return (tag_ids[rows] == tags.unsqueeze(-1)).any(dim=-1)


def _first_valid(candidates: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Along the last axis: the first candidate where ``ok``, and whether there was one."""
    first = ok.float().argmax(dim=-1, keepdim=True)
    return candidates.gather(-1, first).squeeze(-1), ok.any(dim=-1)


def sample_negatives(tag_ids: torch.Tensor, pos_tag: torch.Tensor, num_tags: int, n: int = 6,
                     mode: str = "tagging", tries: int = 8, generator: torch.Generator | None = None,
                     pool_tag_ids: torch.Tensor | None = None) -> Triplets:
    """Draw ``n`` negatives per positive (see the module doc); replacement images from the pool
    (``pool_tag_ids`` (P, T)) when given, else from the batch."""
    if mode not in MODES:
        raise ValueError(f"negatives mode must be one of {MODES}, got {mode!r}")
    b, device = tag_ids.shape[0], tag_ids.device
    on = draw_device(generator, device)
    rand = lambda *shape, high: torch.randint(high, shape, generator=generator, device=on).to(device)
    rows = torch.arange(b, device=device)

    # Image replacement: another image (of the pool, or of the batch) without the positive tag.
    if pool_tag_ids is not None:
        if pool_tag_ids.shape[0] == 0:
            raise ValueError("the negative pool is empty")
        cand = rand(b, n, tries, high=pool_tag_ids.shape[0])
        ok_img = ~has_tag(pool_tag_ids, cand, pos_tag[:, None, None].expand_as(cand))
        cand_img = cand + b
    else:
        cand_img = rand(b, n, tries, high=b)
        ok_img = (cand_img != rows[:, None, None]) & ~has_tag(tag_ids, cand_img,
                                                              pos_tag[:, None, None].expand_as(cand_img))
    neg_image, valid_img = _first_valid(cand_img, ok_img)
    if mode == "retrieval":
        return Triplets(pos_tag, neg_image, pos_tag[:, None].expand(b, n).clone(), valid_img)

    # Tag replacement: a vocabulary tag the image lacks.
    cand_tag = rand(b, n, tries, high=num_tags)
    own = rows[:, None, None].expand_as(cand_tag)
    neg_tag, valid_tag = _first_valid(cand_tag, ~has_tag(tag_ids, own, cand_tag))
    replace_image = torch.rand((b, n), generator=generator, device=on).to(device) < 0.5
    return Triplets(
        pos_tag=pos_tag,
        neg_image=torch.where(replace_image, neg_image, rows[:, None].expand(b, n)),
        neg_tag=torch.where(replace_image, pos_tag[:, None].expand(b, n), neg_tag),
        valid=torch.where(replace_image, valid_img, valid_tag),
    )
