"""LocSens's location input, and location sampling (docs/method.md).

A location enters every location-sensitive model as ``((lat+90)/180, (lon+180)/360)``, in [0, 1]:
training, evaluation, the search CLI and the service all normalise it here. Location sampling
draws each triplet's location from a Gaussian around the true one and wraps it back into [0, 1);
its standard deviation sigma follows the sigma schedule (:mod:`training.models.schedules`).
"""
from __future__ import annotations

import torch


def normalise_location(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """(B, 2) location input ``((lat+90)/180, (lon+180)/360)`` in [0, 1]."""
    return torch.stack([(lat + 90.0) / 180.0, (lon + 180.0) / 360.0], dim=-1)


def sample_locations(loc: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each location drawn from N(loc, sigma^2 I) and wrapped into [0, 1) (docs/method.md)."""
    if sigma <= 0:
        return loc
    noise = torch.randn(loc.shape, generator=generator, device=loc.device if generator is None else generator.device,
                        dtype=loc.dtype).to(loc.device)
    return torch.remainder(loc + sigma * noise, 1.0)
