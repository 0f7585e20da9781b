"""``python -m training.report``: the results report from MLflow (conf/report.yaml).

The Hydra entry lives here, in the file run as ``__main__``, so that Hydra finds ``conf/`` relative
to this file."""
import hydra
from omegaconf import DictConfig

from training.report.build import build_report


@hydra.main(version_base="1.3", config_path="../../conf", config_name="report.yaml")
def main(cfg: DictConfig) -> None:
    print(build_report(cfg).read_text())


main()
