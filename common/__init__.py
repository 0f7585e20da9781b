"""What the data side (``pipeline/``, Spark) and the model side (``training/``, torch) share:
the shard and embeddings contracts, the evaluation metrics and the MLflow helpers.

Nothing here imports Spark or torch, so both sides can import it and neither imports the other.
The whole project in one page: docs/architecture.md.
"""
