"""Indexes over a gallery of images for search and shortlisting: an approximate nearest-neighbour
index of image embeddings (``ann``, FAISS) and a spatial index of where the photos were taken
(``spatial``), and a gallery saved on disk with both (``gallery``). See docs/architecture.md and
docs/evaluation.md ("Evaluation at scale")."""
