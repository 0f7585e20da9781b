"""Each model family's record: read from its class, written into its checkpoints, naming its report
rows; and the experiment configs, which set each key once along their chain."""
from __future__ import annotations

import pytest
import yaml
from helpers import CONF
from helpers.config import compose
from hydra.utils import instantiate

from common.tracking import flatten
from training.models import FAMILIES, family_named, family_of_checkpoint, model_class
from training.models.family import EMBEDDINGS, TASKS


def test_every_model_class_carries_its_record():
    assert list(FAMILIES) == ["mlc", "mcc", "her", "locsens", "factorised"]      # the paper's order
    for name, cls in FAMILIES.items():
        family = cls.family
        assert family.name == name and model_class(name) is cls and family_named(name) is family
        assert family.label and family.description
        # An image model exports embeddings and is evaluated from them; a location model scores itself.
        assert (family.exports == EMBEDDINGS) != bool(family.evaluator)
        assert set(family.registered) <= set(TASKS)
    with pytest.raises(ValueError, match="unknown model family 'resnet'.*known: mlc, mcc"):
        model_class("resnet")


def test_rows_are_named_and_labelled_by_the_record():
    locsens, mcc = family_named("locsens"), family_named("mcc")
    assert (mcc.row_key(), mcc.row_label()) == ("mcc", "MCC")
    assert (locsens.row_key("raw"), locsens.row_label("raw")) == ("locsens_raw", "LocSens - raw locations")
    assert locsens.row_key("sampling", 0.1) == "locsens_sigma_0.1"
    assert locsens.row_label("sampling", 0.1) == "LocSens - location sampling, sigma=0.1"
    assert locsens.variant_order("zeroed") < locsens.variant_order("raw") < locsens.variant_order("sampling")


@pytest.mark.parametrize("experiment, tasks, variant", [
    ("mcc", ("tagging", "retrieval"), None), ("locsens_raw", ("tagging",), "raw"),
    ("locsens", ("retrieval",), "sampling"), ("factorised", ("tagging", "retrieval"), None)])
def test_a_model_says_what_it_is_and_its_checkpoints_too(experiment, tasks, variant):
    cfg = compose("train", f"+experiment={experiment}", "model.backbone.pretrained=false" if experiment == "mcc"
                  else "model.input_dim=300")
    model = instantiate(cfg.model, num_tags=7)
    assert model.tasks == tasks and model.variant == variant
    state: dict = {}
    model.on_save_checkpoint(state)
    assert family_of_checkpoint(state) is type(model).family
    with pytest.raises(ValueError, match="old.ckpt: names no model family"):
        family_of_checkpoint({"state_dict": {}}, "old.ckpt")


def _experiment_keys(name: str) -> tuple[set[str], list[str]]:
    """The keys an experiment file sets itself, and the experiment files it includes."""
    data = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    included = [d for d in data.pop("defaults", []) if isinstance(d, str) and d != "_self_"]
    return set(flatten(data)), included


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_the_experiment_chain_sets_each_key_once(experiment):
    """An experiment and the experiment files it builds on never set the same key (a key set twice
    along a chain is a key whose value depends on the order of files)."""
    seen: dict[str, str] = {}
    chain = [experiment]
    while chain:
        name = chain.pop()
        keys, included = _experiment_keys(name)
        twice = {k: seen[k] for k in keys if k in seen}
        assert not twice, f"{experiment}: {name} sets {sorted(twice)} again"
        seen.update({k: name for k in keys})
        chain += included


def test_each_locsens_experiment_states_its_variant_and_task():
    """The model's variant and task have no default: a LocSens experiment that forgot one would
    train the wrong model silently."""
    model = yaml.safe_load((CONF / "model" / "locsens.yaml").read_text())
    assert model["location"] == "???" and model["negatives_mode"] == "???"
    for path in sorted((CONF / "experiment").glob("locsens*.yaml")):
        if path.stem == "locsens_common":
            continue
        keys, _ = _experiment_keys(path.stem)
        assert {"model.location", "model.negatives_mode", "evaluation.tagging"} <= keys, path.name
