"""The paper's evaluation protocol run on trained models: embedding models from their export
(``embeddings``, also ``python -m training.evaluate``), LocSens's scoring (``locsens``), the
evaluation after a LocSens fit (``after_fit``) and the chunked top-k they share (``topk``). The
metrics themselves live in :mod:`common.metrics`. See docs/architecture.md.
"""
