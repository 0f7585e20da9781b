"""MCC / MLC / HER heads, losses and exported scores; chunked ranking against a full sort."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.errors import SetupError
from training.evaluate.topk import top_k
from training.models.backbone import RANDOM_INIT, build_backbone
from training.models.base import multi_hot, score
from training.models.her import HER
from training.models.mcc import MCC
from training.models.mlc import MLC

torch.set_num_threads(1)
V = 12
KW = dict(backbone={"name": "resnet18", "pretrained": False},
          optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-4))


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 2, 3, 6, 7])
    values = torch.tensor([1, 4, 0, 2, 3, 11, 5])
    return {"image": torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
            "tag": torch.tensor([4, 0, 3, 5]), "tag_values": values, "tag_offsets": offsets}


def test_multi_hot():
    b = _batch()
    m = multi_hot(b["tag_values"], b["tag_offsets"], V)
    assert m.sum().item() == 7 and m[2, [2, 3, 11]].tolist() == [1, 1, 1] and m[1, 0] == 1


def test_mcc_loss_and_embeddings():
    model = MCC(V, embedding_dim=16, **KW).eval()
    b = _batch()
    loss, emb = model.compute_loss(b)
    assert emb.shape == (4, 16) and model.tag_embeddings().shape == (V, 16)
    logits = model.classifier(emb)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, b["tag"]).item(), rel=1e-5)
    assert model.score == "cosine"


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mlc_dot_score_is_the_logit(reduction):
    model = MLC(V, reduction=reduction, **KW).eval()
    b = _batch()
    with torch.no_grad():
        loss, emb = model.compute_loss(b)
        logits = model.classifier(model.features(b["image"]))
        np.testing.assert_allclose(score(model.embed(b["image"]), model.tag_embeddings(), "dot"), logits,
                                   rtol=1e-4, atol=1e-4)
    target = multi_hot(b["tag_values"], b["tag_offsets"], V)
    ref = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 4 if reduction == "sum" \
        else F.binary_cross_entropy_with_logits(logits, target)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)


def test_her_regresses_mean_word_vector():
    wv = torch.randn(V, 8)
    model = HER(V, word_vectors=wv, embedding_dim=8, **KW).eval()
    b = _batch()
    with torch.no_grad():
        loss, emb = model.compute_loss(b)
    unit = F.normalize(wv, dim=1)
    target = torch.stack([unit[b["tag_values"][s:e]].mean(0) for s, e in
                          zip(b["tag_offsets"][:-1].tolist(), b["tag_offsets"][1:].tolist())])
    ref = (1 - F.cosine_similarity(emb, target, dim=1)).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.equal(model.tag_embeddings(), unit)
    restored = HER(V, embedding_dim=8, **KW)  # from a checkpoint: the buffer comes from its state
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.tag_embeddings(), unit)
    with pytest.raises(ValueError):
        HER(V, word_vectors=torch.zeros(V + 1, 8), embedding_dim=8, **KW)


def test_pretrained_backbone_without_weights_stops_with_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SetupError, match="pretrained=false") as err:
        build_backbone("mobilenet_v3_small", pretrained=True, allow_download=False)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(err.value)
    net, dim, used = build_backbone("resnet18", pretrained=False)
    assert dim == 512 and used == RANDOM_INIT
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 512)


def test_pretrained_backbone_loads_weights_put_in_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    reference = torchvision.models.resnet18()
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    net, _, used = build_backbone("resnet18", pretrained=True)
    assert used == str(weights)
    assert torch.equal(net.conv1.weight, reference.conv1.weight)


def test_top_k_matches_full_sort():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(37, 5, generator=g), torch.randn(23, 5, generator=g)
    full = torch.argsort(q @ k.T, dim=1, descending=True)[:, :7].numpy()
    np.testing.assert_array_equal(top_k(q, k, 7, chunk=5), full)
    exclude = torch.zeros(23, dtype=torch.bool)
    exclude[[0, 3, 9]] = True
    s = q @ k.T
    s[:, exclude] = -torch.inf
    np.testing.assert_array_equal(top_k(q, k, 7, chunk=4, exclude=exclude),
                                  torch.argsort(s, dim=1, descending=True)[:, :7].numpy())
    assert top_k(q, k, 50, chunk=8).shape == (37, 23)
