"""torchvision backbones without their classifier, ImageNet weights when they can be had.

Weights are looked up in the torch hub cache only, unless ``allow_download`` (then with a short
socket timeout): a machine without network trains from random initialisation with a warning
instead of hanging or crashing.
"""
from __future__ import annotations

import logging
import socket
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

log = logging.getLogger(__name__)


def _imagenet_state_dict(name: str, allow_download: bool, timeout_s: float):
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None, f"torchvision has no ImageNet weights for {name!r}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists() and not allow_download:
        return None, f"{cached} is not in the torch hub cache and downloads are off"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return weights.get_state_dict(progress=False, check_hash=False), str(weights)
    except Exception as exc:  # noqa: BLE001 - any failure means "no weights", never a crash
        return None, f"loading {weights} failed: {exc!r}"
    finally:
        socket.setdefaulttimeout(previous)


def build_backbone(name: str = "resnet50", pretrained: bool = True, allow_download: bool = False,
                   download_timeout_s: float = 10.0) -> tuple[nn.Module, int]:
    """A torchvision classification model with its last classifier layer removed: (module, feature dim).

    Works for models whose head is ``fc`` (ResNet, RegNet, ShuffleNet, ...) or a ``classifier``
    holding Linear layers (MobileNet, EfficientNet, ...).
    """
    model = torchvision.models.get_model(name, weights=None)
    if pretrained:
        state, what = _imagenet_state_dict(name, allow_download, download_timeout_s)
        if state is None:
            warnings.warn(f"ImageNet weights unavailable for {name} ({what}): training from random "
                          "initialisation", stacklevel=2)
        else:
            model.load_state_dict(state)
            log.info("backbone %s initialised from %s", name, what)
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
    return model, dim
