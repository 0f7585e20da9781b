"""Lightning's MLflow logger, made to outlive a tracking server that goes away during training.

A run on YFCC100M lasts days and tracking servers restart. Lightning's ``MLFlowLogger`` raises on
the first metric the server cannot take (after MLflow's own HTTP retries), which kills the
training. :class:`BufferedMLFlowLogger` hands its metrics to a :class:`common.tracking.MetricBuffer`
instead: kept while the server is unreachable, sent in order once it is back, one warning each
way; at the end it waits up to ``flush_timeout`` seconds, then writes what is still unsent to
``unsent_path``. Rank 0 only, like the logger it extends.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Optional

from lightning_fabric.utilities.logger import _add_prefix
from mlflow.entities import Metric
from pytorch_lightning.loggers import MLFlowLogger

from common.tracking import TRAIN, MetricBuffer, first_line
from training.ranks import is_rank_zero

log = logging.getLogger(__name__)


class BufferedMLFlowLogger(MLFlowLogger):
    def __init__(self, experiment_name: str = TRAIN, *args: Any, retry_seconds: float = 30.0,
                 flush_timeout: float = 120.0, unsent_path: Optional[str] = None, **kwargs: Any):
        super().__init__(experiment_name, *args, **kwargs)
        self.flush_timeout = float(flush_timeout)
        self.buffer = MetricBuffer(self._send, where=self._tracking_uri, retry_seconds=retry_seconds,
                                   unsent_path=unsent_path)

    def _send(self, metrics: dict[str, float], step: Optional[int], timestamp_ms: int) -> None:
        """One batch to the server, named as Lightning's logger names it, stamped when it was logged
        (a resend is then a duplicate the store drops); a method: ddp_spawn pickles loggers."""
        batch = [Metric(key=re.sub("[^a-zA-Z0-9_/. -]+", "", k), value=float(v), timestamp=timestamp_ms, step=step or 0)
                 for k, v in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items() if not isinstance(v, str)]
        self.experiment.log_batch(run_id=self.run_id, metrics=batch, **self._log_batch_kwargs)

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        if is_rank_zero():
            self.buffer.log(metrics, step)

    def log_hyperparams(self, params: Any) -> None:
        """Parameters the server cannot take (unreachable, or a resumed run given other values:
        MLflow keeps a parameter's first value) are reported, not fatal to the training."""
        if not is_rank_zero():
            return
        try:
            super().log_hyperparams(params)
        except Exception as exc:
            log.warning("MLflow: parameters of run %s not logged (%s)", self._run_id, first_line(exc))

    def finalize(self, status: str = "success") -> None:
        """Send what is kept (waiting up to ``flush_timeout`` for the server), then end the run; a
        run whose metrics could not all be sent stays as the server has it (running)."""
        if not is_rank_zero() or not self.buffer.close(self.flush_timeout):
            return
        try:
            super().finalize(status)
        except Exception as exc:
            log.warning("MLflow: could not mark run %s %s (%s); it shows as running until resumed", self._run_id,
                        status, first_line(exc))
