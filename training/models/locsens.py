"""LocSens (docs/method.md): scores an (image, tag, location) triplet.

The image and tag embeddings (MCC's) enter L2-normalised. Each modality is mapped to 300-d
(Linear + ReLU) and L2-normalised (mapping all three to the same width is what made location
matter), the three are concatenated to 900-d, and an MLP of Linear + GroupNorm(32, eps 1e-3) + ReLU
blocks (2048, 2048, 2048, 1024, 512) ends in Linear(512, 1): a raw score. This is the authors'
released network (``MMNet``) function for function, eps included: with PyTorch's default eps 1e-5
the same weights score up to 10% apart and rank differently. Training uses a margin ranking loss
(margin 0.1) averaged over 6 negatives per positive.

The first MLP layer is linear in the concatenation, so it splits into an image, a tag and a
location part: :meth:`LocSensNet.first_layer_parts`. Evaluation computes each part once per image,
tag or query location and only the rest of the MLP once per pair (``training.evaluate.locsens``).

Location variants (``location``) act on the 300-d location *representation* (after projection
and normalisation), as the paper describes: ``raw`` true locations; ``zeroed`` the representation
times 0; ``dropout`` progressive fusion (the representation scaled by a fusion weight alpha that
rises 0 -> 1 over training, and zeroed with probability ``location_dropout`` per positive and its
negatives); ``sampling`` Gaussian location sampling with the sigma schedule
(:mod:`training.models.schedules`), one draw per triplet, the positive and each negative on its own,
as the authors train. Validation always uses true locations (zeroed for the ``zeroed`` variant,
whose model never sees one).

Negative images come from ``pool_embedding`` / ``pool_tag_ids`` when the batch carries them (rows
the loader samples from a shuffle buffer spanning several row groups,
:class:`training.data.embeddings.EmbeddingStream`), else from the batch itself. Each DDP rank draws
its own positives' tags, negatives and location noise from a generator seeded by (seed, rank, epoch).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.negatives import draw_positive_tags, sample_negatives
from training.models.locations import normalise_location, sample_locations
from training.models.schedules import PAPER_SIGMA_SCHEDULE, StageSchedule
from training.models.family import SERVES_LOCATION, TASKS, Family
from training.models.streamed import StreamedModule

PAPER_HIDDEN = (2048, 2048, 2048, 1024, 512)
#: GroupNorm's eps in the authors' released model (PyTorch's default is 1e-5).
AUTHORS_NORM_EPS = 1e-3


class LocSensNet(nn.Module):
    """The network alone: projections, fusion MLP, raw score."""

    def __init__(self, input_dim: int = 300, modality_dim: int = 300,
                 hidden: Sequence[int] = PAPER_HIDDEN, groups: int = 32, norm_eps: float = AUTHORS_NORM_EPS):
        super().__init__()
        if any(h % groups for h in hidden):
            raise ValueError(f"every hidden width must be divisible by the {groups} GroupNorm groups: {list(hidden)}")
        self.modality_dim = modality_dim
        self.image_proj = nn.Linear(input_dim, modality_dim)
        self.tag_proj = nn.Linear(input_dim, modality_dim)
        self.loc_proj = nn.Linear(2, modality_dim)
        self.first = nn.Linear(3 * modality_dim, hidden[0])
        self.first_norm = nn.GroupNorm(groups, hidden[0], eps=norm_eps)
        blocks: list[nn.Module] = [nn.ReLU()]
        for a, b in zip(hidden[:-1], hidden[1:]):
            blocks += [nn.Linear(a, b), nn.GroupNorm(groups, b, eps=norm_eps), nn.ReLU()]
        blocks.append(nn.Linear(hidden[-1], 1))
        self.rest = nn.Sequential(*blocks)

    # Per-modality projections, each L2-normalised; MCC's embeddings enter L2-normalised too, here,
    # so that no caller (training, evaluation, the report, a service) can feed them otherwise.
    def project_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.relu(self.image_proj(F.normalize(x, dim=-1))), dim=-1)

    def project_tag(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.relu(self.tag_proj(F.normalize(x, dim=-1))), dim=-1)

    def project_location(self, loc: torch.Tensor, weight: Optional[torch.Tensor | float] = None) -> torch.Tensor:
        """The 300-d location representation, times ``weight`` (progressive fusion, dropout, zeroed)."""
        rep = F.normalize(F.relu(self.loc_proj(loc)), dim=-1)
        return rep if weight is None else rep * weight

    def first_layer_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first layer's weight split by modality: (W_image, W_tag, W_location)."""
        d = self.modality_dim
        w = self.first.weight
        return w[:, :d], w[:, d:2 * d], w[:, 2 * d:]

    # Each modality's share of the first layer's pre-activation; a triplet's is their sum.
    def image_part(self, image: torch.Tensor) -> torch.Tensor:
        return self.project_image(image) @ self.first_layer_parts()[0].T

    def tag_part(self, tag: torch.Tensor) -> torch.Tensor:
        return self.project_tag(tag) @ self.first_layer_parts()[1].T

    def location_part(self, loc: torch.Tensor, weight: Optional[torch.Tensor | float] = None) -> torch.Tensor:
        """W_l p_l + b: the location's share, with the first layer's bias."""
        return self.project_location(loc, weight) @ self.first_layer_parts()[2].T + self.first.bias

    def head(self, pre: torch.Tensor) -> torch.Tensor:
        """Score from the first layer's pre-activation (..., hidden[0]) -> (...). The last layer
        runs in float32 even under bf16 autocast: a score rounded to bf16 resolves a 0.1 margin to
        a few hundredths, and ties rankings that float32 tells apart."""
        shape = pre.shape[:-1]
        x = self.rest[:-1](self.first_norm(pre.reshape(-1, pre.shape[-1])))
        last = self.rest[-1]
        with torch.autocast(x.device.type, enabled=False):
            out = last(x.to(last.weight.dtype))
        return out.reshape(shape)

    def score_projected(self, image: torch.Tensor, tag: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return self.head(self.first(torch.cat([image, tag, loc], dim=-1)))

    def forward(self, image: torch.Tensor, tag: torch.Tensor, loc: torch.Tensor,
                location_weight: Optional[torch.Tensor | float] = None) -> torch.Tensor:
        """Raw scores of triplets: image and tag embeddings (..., 300), locations (..., 2) in [0, 1];
        ``location_weight`` scales the location representation (None: 1)."""
        return self.score_projected(self.project_image(image), self.project_tag(tag),
                                    self.project_location(loc, location_weight))

    def score_tag_ids(self, image: torch.Tensor, tag_ids: torch.Tensor, loc: torch.Tensor, tag_table: torch.Tensor,
                      location_weight: Optional[torch.Tensor | float] = None) -> torch.Tensor:
        """Raw scores with tags given as vocabulary indices into ``tag_table`` (V, 300) (the
        interface every location model's network shares, see FactorisedNet)."""
        return self(image, tag_table[tag_ids], loc, location_weight)


def draw_generator(seed: int, rank: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one rank's training draws in one epoch (tags, negatives, location noise):
    distinct per rank (seed_everything gives every rank the same global generator), and the same
    for an epoch whether or not the run was resumed. On the training device, so that draws on a GPU
    never wait for the host (a GPU's generator draws other numbers than the CPU's from one seed)."""
    state = np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)
    return torch.Generator(device=device).manual_seed(int(state[0]))


def margin_ranking_loss(pos: torch.Tensor, neg: torch.Tensor, valid: Optional[torch.Tensor] = None,
                        margin: float = 0.1) -> torch.Tensor:
    """mean over positives and their (valid) negatives of max(0, margin - s_pos + s_neg)."""
    losses = F.relu(margin - pos.unsqueeze(-1) + neg)
    if valid is None:
        return losses.mean()
    valid = valid.to(losses.dtype)
    return (losses * valid).sum() / valid.sum().clamp(min=1.0)


class LocSens(StreamedModule):
    """LocSens trained on precomputed MCC embeddings (see the module doc)."""

    family = Family(
        name="locsens", label="LocSens", order=40, evaluator="locsens", serves=SERVES_LOCATION,
        registered={"tagging": "locsens-tagging", "retrieval": "locsens-retrieval"},
        variants={"zeroed": "zeroed locations", "raw": "raw locations", "dropout": "dropout",
                  "sampling": "location sampling"},
        description="LocSens on MCC's embeddings, trained for one task: a JPEG and a location in, top tags out "
                    "(tagging); a tag and a location in, photos out (retrieval, over a search gallery).")

    def __init__(self, num_tags: int, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Optional[Callable[..., Any]] = None, input_dim: int = 300,
                 modality_dim: int = 300, hidden: Sequence[int] = PAPER_HIDDEN, groups: int = 32,
                 norm_eps: float = AUTHORS_NORM_EPS, margin: float = 0.1, negatives: int = 6,
                 negatives_mode: str = "tagging", negative_tries: int = 8, location: str = "raw",
                 location_dropout: float = 0.5,
                 fusion_schedule: Sequence[Sequence[float]] = ((0.0, 0.5), (1.0, 0.25), (1.0, 0.25)),
                 sigma_schedule: Sequence[Sequence[float]] = PAPER_SIGMA_SCHEDULE,
                 sigma_interpolate: bool = False, seed: int = 0):
        super().__init__()
        if location not in self.family.variants:
            raise ValueError(f"model.location must be one of {tuple(self.family.variants)}, got {location!r}")
        if negatives_mode not in TASKS:
            raise ValueError(f"model.negatives_mode must be one of {TASKS} (the task it trains for), "
                             f"got {negatives_mode!r}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.net = LocSensNet(input_dim, modality_dim, hidden, groups, norm_eps)
        self.num_tags = num_tags
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.location = location
        self.sigma_schedule = StageSchedule.from_config(sigma_schedule, sigma_interpolate)
        self.fusion_schedule = StageSchedule.from_config(fusion_schedule, interpolate=True)
        # Current schedule values, set each step by training.callbacks.sigma_snapshots.LocationSchedule.
        self.sigma = float(self.sigma_schedule.stages[0][0])
        self.fusion = 0.0 if location == "dropout" else 1.0
        # MCC's tag embeddings: an input, not a parameter or buffer, so that DDP does not broadcast the
        # 100k x 300 table at every forward and checkpoints do not hold it (moved with the batch).
        self.tag_table = torch.zeros(num_tags, input_dim)
        self._train_generator: Optional[torch.Generator] = None

    @property
    def tasks(self) -> tuple[str, ...]:
        """The one task it was trained for: its negatives say which (``negatives_mode``)."""
        return (self.hparams.negatives_mode,)

    @property
    def variant(self) -> str:
        return self.location

    def set_tag_embeddings(self, table: torch.Tensor) -> None:
        """MCC's tag embeddings (V, 300), L2-normalised; not stored in checkpoints (they are an input)."""
        if table.shape != self.tag_table.shape:
            raise ValueError(f"tag embeddings {tuple(table.shape)}, model built for {tuple(self.tag_table.shape)}")
        self.tag_table = F.normalize(table.float(), dim=-1).to(self.tag_table.device)

    def _table_on(self, device: torch.device) -> torch.Tensor:
        """The tag table on ``device``, moved there once."""
        if self.tag_table.device != device:
            self.tag_table = self.tag_table.to(device)
        return self.tag_table

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "tag_embeddings"):
            self.set_tag_embeddings(torch.tensor(dm.tag_embeddings()))

    # --- locations --------------------------------------------------------------------------------

    def location_weight(self, batch_size: int, train: bool,
                        generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor | float]:
        """What the location representation is multiplied by: None (1), 0, or per positive (B, 1, 1)."""
        if self.location == "zeroed":
            return 0.0
        if not train or self.location != "dropout":
            return None
        # Progressive fusion weight, and the whole location zeroed with probability p, per positive
        # (its negatives share the query's location).
        on = generator.device if generator is not None else self.device
        keep = torch.rand(batch_size, 1, 1, generator=generator, device=on) >= self.hparams.location_dropout
        return (keep.float() * self.fusion).to(self.device)

    def location_parts(self, lat: torch.Tensor, lon: torch.Tensor, triplets: int, train: bool,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The location's share of the first layer per triplet: (B, 1, H) when every triplet of a
        positive has the same location, (B, triplets, H) under location sampling in training, where
        the positive and each negative get their own Gaussian draw."""
        loc = normalise_location(lat.float(), lon.float()).unsqueeze(1)          # (B, 1, 2)
        if train and self.location == "sampling" and self.sigma > 0:
            loc = sample_locations(loc.expand(-1, triplets, -1), self.sigma, generator)
        return self.net.location_part(loc, self.location_weight(loc.shape[0], train, generator))

    # --- training ---------------------------------------------------------------------------------

    #: Whether a training step avoids every wait of the host for the device (None: on GPUs, where
    #: such waits stall the queue of kernels; on the CPU the cheaper way with torch.unique is taken).
    sync_free: Optional[bool] = None

    def _sync_free(self, device: torch.device) -> bool:
        return device.type != "cpu" if self.sync_free is None else bool(self.sync_free)

    def start_epoch_draws(self) -> None:
        self._train_generator = draw_generator(self.hparams.seed, self.global_rank, self.current_epoch, self.device)

    def draw_states(self) -> dict[str, Any]:
        states = super().draw_states()
        if self._train_generator is not None:
            states["locsens"] = self._train_generator.get_state()
        return states

    def restore_draws(self, states: dict[str, Any]) -> None:
        super().restore_draws(states)
        if "locsens" in states and self._train_generator is not None:
            self._train_generator.set_state(states["locsens"])

    def triplet_loss(self, batch: dict[str, torch.Tensor], train: bool,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Margin loss of a batch's positives and negatives.

        The first MLP layer is applied by modality (:meth:`LocSensNet.first_layer_parts`): the image
        part once per image a triplet uses, the tag part once per distinct tag of the batch, the
        location part once per positive (or per triplet, under location sampling), then summed per
        triplet; identical to concatenating, at a fraction of the cost.
        """
        tag_ids = batch["tag_ids"]
        pool_tags = batch.get("pool_tag_ids")
        pos_tag = draw_positive_tags(tag_ids, generator)
        trip = sample_negatives(tag_ids, pos_tag, self.num_tags, self.hparams.negatives,
                                self.hparams.negatives_mode, self.hparams.negative_tries, generator,
                                pool_tag_ids=pool_tags)
        net = self.net
        images = batch["embedding"].float()
        if pool_tags is not None:
            images = torch.cat([images, batch["pool_embedding"].float()])
        b, n = trip.neg_tag.shape
        table = self._table_on(images.device)
        used_rows = torch.cat([torch.arange(b, device=images.device), trip.neg_image.reshape(-1)])
        used_tags = torch.cat([pos_tag, trip.neg_tag.reshape(-1)])
        if not self._sync_free(images.device):
            # Each image and tag projected once, and only those some triplet uses.
            rows, row_of = torch.unique(used_rows, return_inverse=True)
            image = net.image_part(images[rows])[row_of]
            uniq, inverse = torch.unique(used_tags, return_inverse=True)
            tag = net.tag_part(table[uniq])[inverse]
        else:
            # On a GPU, per triplet: torch.unique's output size would make the host wait for the device
            # every step, and the projections are a small part of the MLP's work there.
            image = net.image_part(images[used_rows])
            tag = net.tag_part(table[used_tags])
        loc = self.location_parts(batch["latitude"], batch["longitude"], 1 + n, train, generator)
        pos = net.head(image[:b] + tag[:b] + loc[:, 0])
        neg = net.head(image[b:].view(b, n, -1) + tag[b:].view(b, n, -1) + (loc[:, 1:] if loc.shape[1] > 1 else loc))
        return margin_ranking_loss(pos, neg, trip.valid, self.hparams.margin)

    def training_step(self, batch, batch_idx):
        loss = self.triplet_loss(batch, train=True, generator=self._train_generator)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["embedding"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        # The same negatives every epoch: a fixed generator per batch (and rank).
        gen = torch.Generator(device=self.device).manual_seed(
            (self.hparams.seed * 1_000_003 + batch_idx) * 1_009 + self.global_rank)
        loss = self.triplet_loss(batch, train=False, generator=gen)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["embedding"].shape[0])
        return loss
