"""The results report (``python -m training.report``): every number read back from MLflow
(``tables``), laid out beside the paper's with figures (``build``). See docs/architecture.md.
"""
