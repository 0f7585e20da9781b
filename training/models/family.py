"""What kind of model a run trained, answered once: one :class:`Family` record per model family,
carried by its model class (``MCC.family``), and looked up by name for what only has a run or a
checkpoint (:func:`training.models.family_named`).

Every consumer reads the record instead of guessing from class names, config targets or
attributes: the training entry (export embeddings or score itself after fit), the evaluation
after fit (which scorer), the registry step (which MLflow Model a run serves, under which
registered name), the report (a row's label and place) and MLflow's experiment description.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

#: The paper trains one model per task: tagging (an image and a place in, tags out) and retrieval
#: (a tag and a place in, photos out). A model's tasks are those it was trained for.
TASKS = ("tagging", "retrieval")
#: ``Family.exports``: after fit the image and tag embeddings are exported (common/embeddings.py)
#: and evaluated from the export (training.evaluate.embeddings).
EMBEDDINGS = "embeddings"
#: ``Family.serves``: the MLflow Model a run of the family logs at registration (serving/pyfunc.py):
#: a JPEG in, tags out; or a JPEG and a location in, tags out.
SERVES_IMAGE, SERVES_LOCATION = "image", "location"


@dataclass(frozen=True)
class Family:
    """One model family's facts, for every part of the project that must tell families apart."""

    #: The family's name: checkpoints, MLflow tags (``family``) and report row keys use it.
    name: str
    #: How tables and MLflow name it (the paper's name).
    label: str
    #: One line: what it is and what it takes (MLflow descriptions).
    description: str
    #: Its rows' place in the report's tables, in the paper's order.
    order: int
    #: :data:`EMBEDDINGS`, or None: it scores the split itself after fit with ``evaluator``.
    exports: Optional[str] = None
    #: The scorer of ``training.evaluate.after_fit.EVALUATORS`` (families that export: None).
    evaluator: Optional[str] = None
    #: :data:`SERVES_IMAGE`, :data:`SERVES_LOCATION`, or None (not served).
    serves: Optional[str] = None
    #: Task -> the registered model (MLflow Model Registry) serving it: tagging from a training run,
    #: retrieval from a search gallery built with the family's retrieval model.
    registered: Mapping[str, str] = field(default_factory=dict)
    #: Location variants (``model.location``) -> their name in a row label; a family without any
    #: takes no location input of that kind.
    variants: Mapping[str, str] = field(default_factory=dict)

    def row_key(self, variant: Optional[str] = None, sigma: Optional[float] = None) -> str:
        """The report row of a model of this family: ``mcc``, ``locsens_raw``, ``locsens_sigma_0.1``."""
        if sigma is not None:
            return f"{self.name}_sigma_{sigma:g}"
        return f"{self.name}_{variant}" if variant and self.variants else self.name

    def row_label(self, variant: Optional[str] = None, sigma: Optional[float] = None) -> str:
        """``MCC``, ``LocSens - raw locations``, ``LocSens - location sampling, sigma=0.1``."""
        if not (variant and self.variants):
            return self.label
        text = f"{self.label} - {self.variants.get(variant, variant)}"
        return f"{text}, sigma={sigma:g}" if sigma is not None else text

    def variant_order(self, variant: Optional[str]) -> int:
        """A variant's place among the family's rows (the order of ``variants``)."""
        names = list(self.variants)
        return names.index(variant) if variant in names else len(names)
