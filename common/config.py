"""The project's configuration (``conf/``) composed from code, for every entry point that is not a
``@hydra.main`` app: the Spark jobs (started by spark-submit), the serving commands (which take
subcommands and flags besides ``key=value`` overrides) and the tests.

A bad override, an unknown key or a value that does not resolve is a :class:`ConfigError` naming
the config and the overrides; callers turn it into their own one-line error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

#: ``conf/`` of this checkout (a job shipped to a cluster passes its own, see pipeline/config.py).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class ConfigError(ValueError):
    """A configuration that cannot be composed or resolved; the message names the config and overrides."""


def compose_config(config_name: str, overrides: Sequence[str] = (), conf_dir: Path | str = CONF_DIR,
                   resolve: bool = True) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``key=value`` overrides (``resolve``: interpolations
    resolved, and read-only)."""
    bad = [a for a in overrides if "=" not in a]
    if bad:
        raise ConfigError(f"arguments must be key=value overrides, got {bad!r}")
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        if resolve:
            OmegaConf.resolve(cfg)
            OmegaConf.set_readonly(cfg, True)
    except (HydraException, OmegaConfBaseException) as exc:
        said = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())   # one line
        raise ConfigError(f"config {config_name!r} with overrides {list(overrides)!r}: {said}") from None
    return cfg
