"""The chunked top-k every evaluation ranks with: scores for a block of queries against all keys,
ranked at once, so memory stays at one block of scores whatever the number of queries."""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


class Progress:
    """Logs how far a long ranking has got (queries done, rate, time left) at most every
    ``every`` seconds: exact evaluation at full scale runs for hours."""

    def __init__(self, total: int, what: str, every: float = 60.0):
        self.total, self.what, self.every = total, what, every
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every or done >= self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        log.info("%s: %d of %d queries (%.1f%%), %.1f/s, about %.0f min left", self.what, done, self.total,
                 100.0 * done / self.total, rate, (self.total - done) / max(rate, 1e-9) / 60)


def chunked_top_k(score: Callable[[slice], torch.Tensor], num_queries: int, num_keys: int, k: int, chunk: int,
                  excludes: Sequence[Optional[torch.Tensor]] = (None,)) -> list[np.ndarray]:
    """For each query, the indices of its ``k`` best keys (best first), once per entry of
    ``excludes`` (None, or bool over keys removed from that ranking). ``score(rows)`` gives the
    (len(rows), num_keys) scores of a block of queries; each block is scored once for all masks."""
    ks = [max(0, min(k, num_keys - (int(e.sum()) if e is not None else 0))) for e in excludes]
    out = [np.empty((num_queries, kk), dtype=np.int64) for kk in ks]
    chunk = max(1, chunk)
    progress = Progress(num_queries, f"ranking {num_keys:,} keys")
    for s in range(0, num_queries, chunk):
        scores = score(slice(s, s + chunk))
        for o, kk, exclude in zip(out, ks, excludes):
            masked = scores if exclude is None else scores.masked_fill(exclude, float("-inf"))
            o[s:s + chunk] = masked.topk(kk, dim=1).indices.cpu().numpy()
        progress.update(s + chunk)
    return out


def top_k(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 4096,
          exclude: Optional[torch.Tensor] = None) -> np.ndarray:
    """For each query row, the indices of the k keys with the highest dot product (best first),
    computed ``chunk`` queries at a time; ``exclude`` (bool over keys) removes keys from ranking."""
    return chunked_top_k(lambda rows: queries[rows] @ keys.T, queries.shape[0], keys.shape[0], k, chunk,
                         [exclude])[0]
