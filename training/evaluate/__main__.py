"""``python -m training.evaluate``: evaluate an embeddings export (conf/eval.yaml)."""
from training.evaluate.embeddings import main

main()
