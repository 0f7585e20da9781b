"""A factorised location-sensitive model (docs/method.md, "A factorised model"): LocSens's task with
a score that splits into inner products, so that tagging is one matrix product and retrieval one
maximum-inner-product search, in the spirit of the geographical priors of Mac Aodha et al. (ICCV 2019).

Inputs are LocSens's: MCC's image embedding, MCC's tag embedding (frozen) and the photo's
location. With ``e`` the L2-normalised image embedding, ``u_t`` the L2-normalised tag embedding and
``f(l)`` a learned location encoding (wrapped Fourier features of the normalised latitude and
longitude, then a small MLP)::

    score(i, t, l) = s e_i.u_t  +  f(l).w_t + b_t  +  f(l).(P e_i)  [ + sum_k (P e_i)_k f(l)_k (G u_t)_k ]

- ``s e.u``: MCC's own image-tag cosine, with a learned scale (the image-tag relevance);
- ``f(l).w_t + b_t``: a per-tag location prior, log p(t | l) / p(t) up to a constant: what makes
  tagging location-sensitive (a town's tags rise where the photo was taken);
- ``f(l).(P e)``: how well the image fits the place. For a fixed query (t, l) the prior term is
  the same for every gallery image, so without this term retrieval would ignore the location;
- the optional trilinear term (``interaction=True``, ``G`` starting at zero) lets the image-place
  fit depend on the tag, still as inner products on both sides.

Tagging an image at l: ``tag_queries(e, l) @ tag_keys(U).T`` equals the score up to the per-image
constant ``f(l).(P e)``. Retrieval for (t, l): ``retrieval_queries(u_t, l) @ image_keys(E).T`` equals
it up to the per-query constant ``f(l).w_t + b_t``; the keys are the normalised image embeddings
themselves, so one inner-product index (e.g. FAISS ``IndexFlatIP``) over them serves every query.

Training: softmax cross-entropy for tagging over the whole vocabulary and for retrieval over the
batch's images (and the negative pool when the batch carries one); see :meth:`Factorised.losses`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.models.locations import normalise_location
from training.models.family import SERVES_LOCATION, Family
from training.models.streamed import StreamedModule

#: Fourier frequencies of the location features (multiples of pi on [-1, 1]): 1 is Mac Aodha et
#: al.'s wrap; the higher ones let a small MLP resolve towns.
DEFAULT_FREQUENCIES = (1, 2, 4, 8, 16, 32)


def fourier_features(loc: torch.Tensor, frequencies: Sequence[float]) -> torch.Tensor:
    """sin / cos of pi k x for the normalised location (..., 2) in [0, 1] mapped to [-1, 1]: integer k
    keeps longitude -180 and 180 the same point."""
    x = 2.0 * loc - 1.0
    k = torch.as_tensor(list(frequencies), dtype=loc.dtype, device=loc.device)
    angles = torch.pi * x.unsqueeze(-1) * k                       # (..., 2, K)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


class FactorisedNet(nn.Module):
    """The network alone: location encoder, per-tag location vectors and biases, image projection."""

    def __init__(self, num_tags: int, input_dim: int = 300, location_dim: int = 64,
                 hidden: Sequence[int] = (256, 256), frequencies: Sequence[float] = DEFAULT_FREQUENCIES,
                 scale: float = 10.0, interaction: bool = True):
        super().__init__()
        self.frequencies = tuple(float(k) for k in frequencies)
        layers: list[nn.Module] = []
        width = 4 * len(self.frequencies)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, location_dim))
        self.location_encoder = nn.Sequential(*layers)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.tag_location = nn.Parameter(0.01 * torch.randn(num_tags, location_dim))    # w_t
        self.tag_bias = nn.Parameter(torch.zeros(num_tags))                              # b_t
        self.image_location = nn.Linear(input_dim, location_dim, bias=False)             # P
        nn.init.normal_(self.image_location.weight, std=0.01)
        # G: the tag's weighting of the image-place fit; zero at the start (the model without it).
        self.tag_interaction = nn.Linear(input_dim, location_dim, bias=False) if interaction else None
        if self.tag_interaction is not None:
            nn.init.zeros_(self.tag_interaction.weight)
        self.register_buffer("tag_table", torch.zeros(num_tags, input_dim), persistent=False)

    # --- parts -------------------------------------------------------------------------------------

    def encode_location(self, loc: torch.Tensor, location_weight: Optional[float] = None) -> torch.Tensor:
        """f(l) (..., d) from normalised locations (..., 2); ``location_weight`` 0 drops every location term."""
        f = self.location_encoder(fourier_features(loc, self.frequencies))
        return f if location_weight is None else f * location_weight

    @staticmethod
    def image_keys(images: torch.Tensor) -> torch.Tensor:
        """e: the normalised image embeddings (N, 300), the retrieval index's keys."""
        return F.normalize(images, dim=-1)

    @staticmethod
    def tag_vectors(tags: torch.Tensor) -> torch.Tensor:
        """u_t: the normalised tag embeddings."""
        return F.normalize(tags, dim=-1)

    def _tag_weight(self, u: torch.Tensor) -> Optional[torch.Tensor]:
        """1 + G u: the tag's weight on each coordinate of the image-place fit (None without G)."""
        return None if self.tag_interaction is None else 1.0 + self.tag_interaction(u)

    # --- brute force -------------------------------------------------------------------------------

    def forward(self, image: torch.Tensor, tag: torch.Tensor, loc: torch.Tensor,
                tag_table: Optional[torch.Tensor] = None, location_weight: Optional[float] = None) -> torch.Tensor:
        """Raw scores of triplets, brute force: image embeddings (..., 300), ``tag`` vocabulary indices
        (...), normalised locations (..., 2); leading shapes broadcast. Tags are indices, not
        embeddings as LocSensNet takes them, because w_t and b_t belong to the vocabulary entry;
        their embeddings come from ``tag_table`` (V, 300), by default the one set by :meth:`set_tag_table`."""
        if torch.is_floating_point(tag):
            raise TypeError("FactorisedNet.forward takes tag indices into the vocabulary, not embeddings")
        table = self.tag_table if tag_table is None else tag_table
        e, u = self.image_keys(image), self.tag_vectors(table[tag])
        f = self.encode_location(loc, location_weight)
        fit = self.image_location(e) * f                                         # (P e) * f(l)
        weight = self._tag_weight(u)
        fit = fit.sum(-1) if weight is None else (fit * weight).sum(-1)
        return self.scale * (e * u).sum(-1) + (f * self.tag_location[tag]).sum(-1) + self.tag_bias[tag] + fit

    def score_tag_ids(self, image: torch.Tensor, tag_ids: torch.Tensor, loc: torch.Tensor, tag_table: torch.Tensor,
                      location_weight: Optional[float] = None) -> torch.Tensor:
        """:meth:`forward` (the interface every location model's network shares, see LocSensNet)."""
        return self(image, tag_ids, loc, tag_table=tag_table, location_weight=location_weight)

    def set_tag_table(self, table: torch.Tensor) -> None:
        """The vocabulary's (MCC) embeddings that :meth:`forward` looks tags up in; not in checkpoints."""
        if table.shape != self.tag_table.shape:
            raise ValueError(f"tag embeddings {tuple(table.shape)}, model built for {tuple(self.tag_table.shape)}")
        self.tag_table = table.detach().to(self.tag_table)

    # --- factorised scoring ------------------------------------------------------------------------

    def tag_queries(self, images: torch.Tensor, loc: torch.Tensor,
                    location_weight: Optional[float] = None) -> torch.Tensor:
        """(N, D) queries of images at their locations: ``@ tag_keys(table).T`` gives every tag's score
        less the per-image constant f(l).(P e), which does not change the ranking."""
        e = self.image_keys(images)
        f = self.encode_location(loc, location_weight)
        parts = [self.scale * e, f, torch.ones_like(f[..., :1])]
        if self.tag_interaction is not None:
            parts.append(self.image_location(e) * f)
        return torch.cat(parts, dim=-1)

    def tag_keys(self, tag_table: torch.Tensor) -> torch.Tensor:
        """(V, D) keys [u_t ; w_t ; b_t (; G u_t)] of the whole vocabulary, in ``tag_table`` order."""
        u = self.tag_vectors(tag_table)
        parts = [u, self.tag_location, self.tag_bias[:, None]]
        if self.tag_interaction is not None:
            parts.append(self.tag_interaction(u))
        return torch.cat(parts, dim=-1)

    def tag_offsets(self, images: torch.Tensor, loc: torch.Tensor,
                    location_weight: Optional[float] = None) -> torch.Tensor:
        """(N,) what :meth:`tag_queries` leaves out: score = query . key + offset."""
        e = self.image_keys(images)
        return (self.image_location(e) * self.encode_location(loc, location_weight)).sum(-1)

    def retrieval_queries(self, tag_vectors: torch.Tensor, loc: torch.Tensor,
                          location_weight: Optional[float] = None) -> torch.Tensor:
        """(Q, 300) queries for (tag, location) pairs: s u_t + P^T (f(l) (* (1 + G u_t))). Their inner
        product with :meth:`image_keys` is the score less the per-query constant f(l).w_t + b_t."""
        u = self.tag_vectors(tag_vectors)
        f = self.encode_location(loc, location_weight)
        weight = self._tag_weight(u)
        if weight is not None:
            f = f * weight
        return self.scale * u + f @ self.image_location.weight

    def retrieval_offsets(self, tag_ids: torch.Tensor, loc: torch.Tensor,
                          location_weight: Optional[float] = None) -> torch.Tensor:
        """(Q,) what :meth:`retrieval_queries` leaves out: f(l).w_t + b_t."""
        f = self.encode_location(loc, location_weight)
        return (f * self.tag_location[tag_ids]).sum(-1) + self.tag_bias[tag_ids]


def tagging_loss(logits: torch.Tensor, tag_ids: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over the vocabulary, once per tag of each image, with the image's other
    tags out of the denominator (they are not negatives; with them in, an image's tags would compete
    with each other): per positive p, softplus(logsumexp(negatives) - z_p); mean per image, then
    over images. ``tag_ids`` (B, T) padded with -1."""
    valid = tag_ids >= 0
    idx = tag_ids.clamp(min=0)
    positive = _tag_mask(tag_ids, logits.shape[1])
    negatives = torch.logsumexp(logits.masked_fill(positive, float("-inf")), dim=1, keepdim=True)
    per_tag = F.softplus(negatives - logits.gather(1, idx)) * valid
    return (per_tag.sum(1) / valid.sum(1).clamp(min=1)).mean()


def _tag_mask(tag_ids: torch.Tensor, num_tags: int) -> torch.Tensor:
    """(B, V) bool: which tags each image carries (padding goes to a spare column, then dropped)."""
    idx = torch.where(tag_ids >= 0, tag_ids, torch.full_like(tag_ids, num_tags))
    mask = torch.zeros(tag_ids.shape[0], num_tags + 1, dtype=torch.bool, device=tag_ids.device)
    return mask.scatter_(1, idx, True)[:, :num_tags]


def retrieval_loss(logits: torch.Tensor, carries: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of each (tag, location) query over candidate images (Q, C): the query's
    own image ``target`` is the positive; other candidates that carry the tag (``carries``) are
    masked out, since ranking them below would be wrong."""
    own = torch.zeros_like(carries).scatter_(1, target[:, None], True)
    logits = logits.masked_fill(carries & ~own, float("-inf"))
    return F.cross_entropy(logits, target)


class Factorised(StreamedModule):
    """The factorised model trained on precomputed MCC embeddings (see the module doc)."""

    family = Family(
        name="factorised", label="Factorised (image-tag + location-tag)", order=50, evaluator="factorised",
        serves=SERVES_LOCATION, registered={"tagging": "factorised", "retrieval": "factorised-retrieval"},
        description="The factorised location-sensitive model on MCC's embeddings (one model for both tasks): "
                    "a JPEG and a location in, top tags out; or a tag and a location, photos out.")

    def __init__(self, num_tags: int, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Optional[Callable[..., Any]] = None, input_dim: int = 300, location_dim: int = 64,
                 hidden: Sequence[int] = (256, 256), frequencies: Sequence[float] = DEFAULT_FREQUENCIES,
                 scale: float = 10.0, interaction: bool = True, retrieval_weight: float = 1.0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.net = FactorisedNet(num_tags, input_dim, location_dim, hidden, frequencies, scale, interaction)
        self.num_tags = num_tags
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    def set_tag_embeddings(self, table: torch.Tensor) -> None:
        """MCC's tag embeddings (V, 300), L2-normalised; not stored in checkpoints (they are an input)."""
        self.net.set_tag_table(F.normalize(table.float(), dim=-1))

    @property
    def tag_table(self) -> torch.Tensor:
        return self.net.tag_table

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "tag_embeddings"):
            self.set_tag_embeddings(torch.tensor(dm.tag_embeddings()))

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tagging, retrieval) losses of a batch, each a softmax cross-entropy.

        Tagging: each image at its location against the whole vocabulary (one matrix product), every
        tag of the image a positive. Retrieval: every (tag, location) of a batch image queries the
        batch's images and the negative pool; a candidate carrying the tag is masked out. Both use
        every tag of every image, so neither draws anything at random.
        """
        net = self.net
        images, tag_ids = batch["embedding"].float(), batch["tag_ids"]
        loc = normalise_location(batch["latitude"].float(), batch["longitude"].float())
        tagging = tagging_loss(net.tag_queries(images, loc) @ net.tag_keys(self.tag_table).T, tag_ids)

        candidates, candidate_tags = images, tag_ids
        if batch.get("pool_embedding") is not None:
            candidates = torch.cat([images, batch["pool_embedding"].float()])
            candidate_tags = _pad_cat(tag_ids, batch["pool_tag_ids"])
        rows, cols = torch.nonzero(tag_ids >= 0, as_tuple=True)            # every (image, tag) positive
        tags = tag_ids[rows, cols]
        queries = net.retrieval_queries(self.tag_table[tags], loc[rows])   # (Q, 300)
        logits = queries @ net.image_keys(candidates).T                    # (Q, C)
        carries = (candidate_tags[None, :, :] == tags[:, None, None]).any(-1)
        return tagging, retrieval_loss(logits, carries, rows)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        tagging, retrieval = self.losses(batch)
        loss = tagging + self.hparams.retrieval_weight * retrieval
        size = batch["embedding"].shape[0]
        sync = stage == "val"
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=sync)
        self.log(f"{stage}/tagging_loss", tagging, batch_size=size, sync_dist=sync)
        self.log(f"{stage}/retrieval_loss", retrieval, batch_size=size, sync_dist=sync)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")


def _pad_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-concatenate two -1-padded tag matrices of possibly different widths."""
    width = max(a.shape[1], b.shape[1])
    a = F.pad(a, (0, width - a.shape[1]), value=-1)
    b = F.pad(b, (0, width - b.shape[1]), value=-1)
    return torch.cat([a, b])
