"""Trained models ready to use: the scorers that load a checkpoint and answer one request
(``scorers``), and the same as MLflow Models (``pyfunc``), logged by every training run. See
docs/architecture.md."""
