"""The model side: PyTorch Lightning models trained on the Parquet shards and embeddings the Spark
jobs write. It imports ``common`` and never ``pipeline`` (no Spark). Entry point:
``python -m training.run``. The whole project in one page: docs/architecture.md.
"""
