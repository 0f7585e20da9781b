"""What uses trained models: the search gallery and its command line (``gallery``, ``search``:
``python -m serving.search``), the checkpoints that answer requests (``scorers``), the same as
MLflow Models (``pyfunc``), the Model Registry step (``register``: ``python -m serving.register``),
the REST service (``serve``: ``python -m serving.serve``) with its photos (``photos``) and web page
(``web``). It may import ``training``; ``training`` never imports it. See docs/architecture.md.
"""
