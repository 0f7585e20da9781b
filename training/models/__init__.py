"""The models and what they train with: the image models MCC, MLC and HER on a common base
(``base``, ``backbone``), LocSens with its negatives (``locsens``, ``negatives``), the factorised
model (``factorised``), location inputs and sampling (``locations``), the sigma and learning-rate
schedules (``schedules``), and each family's record (``family``). Pure modules: no file I/O.
See docs/architecture.md.

:data:`FAMILIES` names every model class by its family, for what has only a run's tags or a
checkpoint and must find the class.
"""
from __future__ import annotations

from typing import Any, Mapping

from training.models.factorised import Factorised
from training.models.family import Family
from training.models.her import HER
from training.models.locsens import LocSens
from training.models.mcc import MCC
from training.models.mlc import MLC
from training.models.streamed import FAMILY_KEY, StreamedModule

#: Family name -> model class, in the report's order.
FAMILIES: dict[str, type[StreamedModule]] = {
    cls.family.name: cls for cls in sorted((MLC, MCC, HER, LocSens, Factorised), key=lambda c: c.family.order)}


def model_class(name: str) -> type[StreamedModule]:
    """The model class of family ``name``; a ValueError naming the known families otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def family_named(name: str) -> Family:
    return model_class(name).family


def family_of_checkpoint(checkpoint: Mapping[str, Any], path: str = "checkpoint") -> Family:
    """The family a checkpoint (``torch.load``-ed) was saved by (every model writes it, see
    :class:`~training.models.streamed.StreamedModule`)."""
    name = checkpoint.get(FAMILY_KEY)
    if not name:
        raise ValueError(f"{path}: names no model family (saved by an older version of this project); "
                         "train the model again")
    return family_named(name)
