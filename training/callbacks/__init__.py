"""Lightning callbacks that act during a run: the embeddings export (``export``), the sigma
schedule's snapshots (``sigma_snapshots``) and throughput logging (``throughput``).
See docs/architecture.md.
"""
