"""What the tests share: the repository's paths, composed configs (``config``), fixtures written
through the project's contracts (``shards``, ``embeddings``, ``yfcc``), Spark job helpers
(``spark_jobs``), real servers and a headless browser (``servers``), and the fault table
(``faults``). Not production code."""
from pathlib import Path

#: The repository root (the tests run commands from it) and its configuration.
ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
