"""torchvision backbones without their classifier, with ImageNet weights when asked for.

Weights are looked up in the torch hub cache only, unless ``allow_download`` (then with a short
socket timeout), so an offline machine never hangs. When ``pretrained`` is asked for and the
weights cannot be had, the run stops with a message saying where to put the file (or to set
``pretrained=false``): a model silently trained from random initialisation would be reported as
an ImageNet-initialised one. :func:`build_backbone` returns which weights it used, for MLflow.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

from training.errors import SetupError

#: What :func:`build_backbone` reports when no pretrained weights were loaded.
RANDOM_INIT = "random initialisation"

log = logging.getLogger(__name__)


def _imagenet_state_dict(name: str, allow_download: bool, timeout_s: float) -> tuple[dict, str]:
    """(state dict, weights name), or a :class:`SetupError` saying how to provide them."""
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise SetupError(f"model.backbone.pretrained=true, but torchvision has no ImageNet weights for "
                         f"{name!r}: set model.backbone.pretrained=false") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    how = (f"put {weights.url} at {cached} (the torch hub cache; TORCH_HOME moves it), set "
           "model.backbone.allow_download=true on a machine with network, or set "
           "model.backbone.pretrained=false to train from random initialisation")
    if not cached.exists() and not allow_download:
        raise SetupError(f"model.backbone.pretrained=true, but the ImageNet weights of {name} ({weights}) are "
                         f"not in the torch hub cache and downloads are off: {how}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return weights.get_state_dict(progress=False, check_hash=False), str(weights)
    except Exception as exc:  # noqa: BLE001 - a download or a corrupt file: say so, and how to fix it
        raise SetupError(f"model.backbone.pretrained=true, but loading {weights} failed ({exc!r}): {how}") from exc
    finally:
        socket.setdefaulttimeout(previous)


def build_backbone(name: str = "resnet50", pretrained: bool = True, allow_download: bool = False,
                   download_timeout_s: float = 10.0) -> tuple[nn.Module, int, str]:
    """A torchvision classification model with its last classifier layer removed:
    (module, feature dim, the weights it starts from: a torchvision weights name or ``RANDOM_INIT``).

    Works for models whose head is ``fc`` (ResNet, RegNet, ShuffleNet, ...) or a ``classifier``
    holding Linear layers (MobileNet, EfficientNet, ...).
    """
    model = torchvision.models.get_model(name, weights=None)
    used = RANDOM_INIT
    if pretrained:
        state, used = _imagenet_state_dict(name, allow_download, download_timeout_s)
        model.load_state_dict(state)
        log.info("backbone %s initialised from %s", name, used)
    if isinstance(getattr(model, "fc", None), nn.Linear):
        dim = model.fc.in_features
        model.fc = nn.Identity()
    elif isinstance(getattr(model, "classifier", None), nn.Module):
        linears = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{name}: no Linear layer in its classifier")
        dim = linears[0].in_features
        model.classifier = nn.Identity()
    else:
        raise ValueError(f"{name}: unknown head layout (expected .fc or .classifier)")
    return model, dim, used
