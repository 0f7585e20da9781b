"""Data for training and evaluation: the epoch plan shared by every stream (``plan``), image
shards to batches (``images``, ``shards``), MCC's embeddings export to LocSens batches
(``embeddings``), and HER's word-vector targets (``word_vectors``). Reads files; holds no model.
See docs/architecture.md.
"""
