"""The paper's evaluation protocol run on trained models: embedding models from their export
(``embeddings``, also ``python -m training.evaluate``), LocSens's scoring exact or shortlisted
(``locsens``, ``rerank``), the factorised model's (``factorised``), the protocol around a model's
rankers (``protocol``), the evaluation after a location model's fit (``after_fit``), the MLflow run
every evaluation logs (``runs``) and the chunked top-k they share (``topk``). The metrics
themselves live in :mod:`common.metrics`. See docs/architecture.md.
"""
