"""Job settings from ``conf/`` through Hydra's compose API, and the errors a job reports.

Jobs are started by ``spark-submit``, not by ``@hydra.main``, so they compose the config
themselves from ``key=value`` arguments. Every problem a user can cause (a bad override, a
missing input, an impossible setting) becomes a :class:`PipelineError` whose message names the
setting or file; :func:`run_job` prints it as one line and exits non-zero instead of a traceback.
"""
from __future__ import annotations

import atexit
import logging
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from common.config import CONF_DIR, ConfigError, compose_config

log = logging.getLogger("pipeline")


class PipelineError(RuntimeError):
    """A user-facing failure: bad input or settings. The message says what and where."""


def load_config(argv: Sequence[str], config_name: str = "pipeline",
                conf_dir: Path | str = CONF_DIR) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``key=value`` overrides; resolved and read-only."""
    try:
        return compose_config(config_name, argv, conf_dir)
    except ConfigError as exc:
        raise PipelineError(str(exc)) from None


def job_conf_dir() -> Path:
    """The ``conf/`` a job composes its settings from: the one beside the job script (``jobs/<job>.py``
    -> ``conf/``, a checkout in client mode), else this install's, else the one inside the code
    archive the code itself came from (``spark-submit --py-files locsens-pipeline.zip``, where in
    cluster deploy mode the driver runs on a cluster node that has only the script and the zip)."""
    script = Path(sys.argv[0]).resolve()
    beside = script.parents[1] / "conf" if len(script.parents) > 1 else None
    for candidate in (beside, CONF_DIR):
        if candidate is not None and (candidate / "pipeline.yaml").is_file():
            return candidate
    archived = archived_conf(CONF_DIR)
    if archived is not None:
        return archived
    raise PipelineError(f"no conf/pipeline.yaml beside the job script ({beside}), in this install ({CONF_DIR}) "
                        "or in a code archive: ship the archive make dist builds (dist/locsens-pipeline.zip) "
                        "with spark-submit --py-files")


def archived_conf(conf_dir: Path) -> Path | None:
    """``conf_dir`` when it lies inside a zip on ``sys.path`` (``<archive>.zip/conf``): its files
    extracted to a temporary folder (removed at exit), which Hydra can read; else None."""
    archive = next((p for p in conf_dir.parents if p.is_file() and zipfile.is_zipfile(p)), None)
    if archive is None:
        return None
    inside = conf_dir.relative_to(archive).as_posix()
    out = Path(tempfile.mkdtemp(prefix="locsens-conf-"))
    atexit.register(shutil.rmtree, out, True)
    with zipfile.ZipFile(archive) as z:
        z.extractall(out, members=[m for m in z.namelist() if m.startswith(f"{inside}/")])
    if not (out / inside / "pipeline.yaml").is_file():
        return None
    log.info("settings from %s inside %s", inside, archive)
    return out / inside


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def candidates(value: Any) -> list[str]:
    """A path setting that may list several candidates (``clean.dataset``), as a list."""
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def require_int(cfg: DictConfig, key: str, *, minimum: int | None = None) -> int:
    """``cfg[key]`` as an int, or a :class:`PipelineError` naming the setting."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise PipelineError(f"setting {key}={value!r}: expected an integer{bound}")
    return value


def split_size(value: Any, key: str) -> int | float:
    """A split size: an int >= 1 is a count, a float in (0, 1) is a fraction."""
    if isinstance(value, bool):
        raise PipelineError(f"setting {key}={value!r}: expected a count >= 1 or a fraction in (0, 1)")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and 0.0 <= value < 1.0:
        return value
    raise PipelineError(f"setting {key}={value!r}: expected a count >= 1 or a fraction in (0, 1)")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "alembic", "urllib3", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_job(main: Callable[[DictConfig], Any], argv: Sequence[str] | None = None) -> None:
    """Entry point of a job script: compose the config, run, turn user errors into one line."""
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(argv, conf_dir=job_conf_dir())
        main(cfg)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
