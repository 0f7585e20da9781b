"""``python -m training.report``: the results report from MLflow (conf/report.yaml)."""
from training.report.build import main

main()
