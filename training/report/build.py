"""The results report of a demo (or real) run: the paper's tables with our numbers beside the
paper's, figures, and the pipeline's statistics; one Markdown file plus PNGs, logged to MLflow.

    python -m training.report [report.output=outputs/report]

Figures: P@10 per distance granularity for every model; P@10 against sigma (the paper's sigma
plot); retrieval grids (LocSens's top test images for a hashtag at several locations, paper
figure 1); and LocSens's tags for one image under several faked locations (supplement figure 5).
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Optional

import mlflow
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from common.markdown import write_block
from common.metrics import NOPLACES, location_metric_name
from common.tracking import REPORT, latest_finished_run, stage_run
from training.data.embeddings import LocSensDataModule
from training.data.shards import read_split_images, read_vocab
from training.evaluate.locsens import retrieve_images, tag_images
from training.models.locations import normalise_location
from training.models.locsens import LocSens
from training.report.findings import findings, findings_section
from training.report.results import DISTANCE_COLUMNS, UPPER_BOUND, Results, collect_results, ordered
from training.report.tables import (agnostic_retrieval_table, location_table, noplaces_table, queries_note,
                                    summary_table, tagging_table)

log = logging.getLogger(__name__)

FINDINGS_INTRO = ("The patterns the paper's results show (docs/evaluation.md), each judged on these runs seed by "
                  "seed: a LocSens model against the MCC whose embeddings it read, the smallest sigma's snapshot "
                  "against the largest's of the same run. A pattern holds when it holds in every seed.")


# --- pipeline statistics ----------------------------------------------------------------------

def pipeline_stats(tracking_uri: str) -> dict[str, dict[str, float]]:
    """Latest metrics of each pipeline stage's MLflow run (counts, rejects by reason, timings)."""
    mlflow.set_tracking_uri(tracking_uri)
    out = {}
    for stage in ("clean_metadata", "build_vocab", "shard_dataset", "frequency_baselines"):
        run = latest_finished_run(f"pipeline/{stage}")
        if run is not None:
            out[stage] = dict(run.data.metrics)
    return out


def stats_section(stats: dict[str, dict[str, float]]) -> str:
    lines = []
    clean = stats.get("clean_metadata", {})
    if clean:
        lines.append(f"- Input lines: {clean.get('input_lines', float('nan')):,.0f}; kept "
                     f"{clean.get('kept', float('nan')):,.0f}; rejected {clean.get('rejected', float('nan')):,.0f}")
        reasons = {k.split("/", 1)[1]: v for k, v in clean.items() if k.startswith("rejected/")}
        if reasons:
            lines.append("- Rejected by reason: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(reasons.items())))
    for stage in ("build_vocab", "shard_dataset"):
        m = stats.get(stage, {})
        if m:
            shown = {k: v for k, v in m.items() if not k.startswith("seconds")}
            lines.append(f"- {stage}: " + ", ".join(f"{k} {v:,.6g}" for k, v in sorted(shown.items())))
    timings = {f"{s}": m["seconds/total"] for s, m in stats.items() if "seconds/total" in m}
    if timings:
        lines.append("- Stage wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return "\n".join(lines) if lines else "_No pipeline runs found in the tracking store._"


# --- figures ----------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_granularities(results: Results, path: Path) -> Optional[Path]:
    """P@10 per granularity of every retrieval row."""
    plt = _plt()
    models = [(k, r) for k, r in ordered(results) if all(location_metric_name(g) in r.mean for g in DISTANCE_COLUMNS)]
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, r in models:
        ax.plot(range(len(DISTANCE_COLUMNS)), [r.mean[location_metric_name(g)] for g in DISTANCE_COLUMNS],
                marker="o", label=r.label, linestyle="--" if key == UPPER_BOUND else "-")
    ax.set_xticks(range(len(DISTANCE_COLUMNS)), ["agnostic", "2500 km", "750 km", "200 km", "25 km", "1 km"])
    ax.set_ylabel("P@10 (%)")
    ax.set_title("Location-sensitive retrieval: P@10 per granularity")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sigma(results: Results, path: Path) -> Optional[Path]:
    """P@10 per granularity against sigma, over the sigma snapshots' rows (error bars: repeats)."""
    plt = _plt()
    stats = [r for _, r in ordered(results) if r.sigma is not None]
    if len(stats) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(len(stats))
    for g in DISTANCE_COLUMNS:
        key = location_metric_name(g)
        sd = [r.sd.get(key, 0.0) for r in stats]   # error bars: spread over repeats
        ax.errorbar(x, [r.mean.get(key, np.nan) for r in stats], yerr=sd if any(sd) else None, marker="o",
                    capsize=3, label=g)
    if stats[0].runs > 1:
        ax.set_xlabel(f"mean and standard deviation over {stats[0].runs} runs")
    ax.set_xticks(x, [f"sigma={r.sigma:g}" for r in stats])
    ax.set_ylabel("P@10 (%)")
    ax.set_title("LocSens with location sampling: P@10 against sigma")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class FigureData:
    """What every qualitative figure shares, read once: MCC's test embeddings, the vocabulary, and
    the JPEGs of the test images actually shown (never the whole split's images)."""

    def __init__(self, embeddings_dir: Path, shards_dir: Path):
        dm = LocSensDataModule(str(embeddings_dir))
        self.shards_dir = shards_dir
        self.tag_table = torch.tensor(dm.tag_embeddings())
        self.test = dm.split_arrays("test")
        vocab = read_vocab(shards_dir)
        self.tags = dict(zip(vocab.column("tag").to_pylist(), vocab.column("index").to_pylist()))
        self.names = {i: t for t, i in self.tags.items()}
        self.jpeg: dict[int, bytes] = {}

    def prefetch(self, rows) -> None:
        """Read the JPEGs of these test rows in one filtered pass over the split."""
        ids = [int(self.test["photo_id"][r]) for r in np.asarray(rows).ravel()]
        missing = [i for i in ids if i not in self.jpeg]
        if missing:
            self.jpeg.update(read_split_images(self.shards_dir, "test", missing))

    def image(self, row: int):
        self.prefetch([row])
        return Image.open(io.BytesIO(self.jpeg[int(self.test["photo_id"][row])])).convert("RGB")


class Figures:
    """The qualitative figures of one LocSens checkpoint over the shared :class:`FigureData`."""

    def __init__(self, checkpoint: Path, data: FigureData):
        self.model = LocSens.load_from_checkpoint(str(checkpoint), map_location="cpu", optimizer=None,
                                                  weights_only=True).eval()
        self.model.set_tag_embeddings(data.tag_table)
        self.data = data

    def retrieval_grid(self, tags: list[str], locations: dict[str, list[float]], top: int, path: Path) -> Optional[Path]:
        d = self.data
        tags = [t for t in tags if t in d.tags]
        if not tags:
            return None
        plt = _plt()
        names = list(locations)
        fig, axes = plt.subplots(len(tags) * len(names), top, figsize=(top * 1.4, len(tags) * len(names) * 1.5))
        axes = np.atleast_2d(axes)
        gallery = torch.as_tensor(d.test["embedding"])
        for ti, tag in enumerate(tags):
            q_loc = normalise_location(torch.tensor([locations[n][0] for n in names]).float(),
                                       torch.tensor([locations[n][1] for n in names]).float())
            q_tags = torch.full((len(names),), d.tags[tag])
            top_rows = retrieve_images(self.model.net, gallery, q_tags, q_loc, self.model.tag_table, k=top)
            d.prefetch(top_rows)
            for li, name in enumerate(names):
                for j in range(top):
                    ax = axes[ti * len(names) + li, j]
                    ax.imshow(d.image(top_rows[li, j]))
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if j == 0:
                        ax.set_ylabel(f"#{tag}\n{name}", fontsize=7)
        fig.suptitle("LocSens retrieval: top test images for a hashtag at several locations", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def faked_locations(self, rows: list[int], locations: dict[str, list[float]], path: Path) -> Optional[Path]:
        d = self.data
        d.prefetch(rows)
        plt = _plt()
        names = list(locations)
        fig, axes = plt.subplots(len(rows), 1 + len(names), figsize=(2.2 * (1 + len(names)), 2.2 * len(rows)))
        axes = np.atleast_2d(axes)
        for i, row in enumerate(rows):
            emb = torch.as_tensor(d.test["embedding"][row:row + 1]).expand(len(names), -1)
            loc = normalise_location(torch.tensor([locations[n][0] for n in names]).float(),
                                     torch.tensor([locations[n][1] for n in names]).float())
            top = tag_images(self.model.net, emb, loc, self.model.tag_table, k=5)
            axes[i, 0].imshow(d.image(row))
            axes[i, 0].set_axis_off()
            for j, name in enumerate(names):
                ax = axes[i, j + 1]
                ax.set_axis_off()
                ax.text(0.0, 1.0, name + ":\n" + "\n".join(d.names[int(t)] for t in top[j]),
                        va="top", fontsize=8, family="monospace")
        fig.suptitle("LocSens top-5 tags for an image under faked locations", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


# --- the report -------------------------------------------------------------------------------

def registry_section(uri: str, alias: str = "champion") -> str:
    """The registered models (python -m serving.register) and the version each alias names, with
    the run it came from: which trained models a reader of this report can load and serve."""
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    try:
        registered = sorted(client.search_registered_models(), key=lambda m: m.name)
    except mlflow.exceptions.MlflowException:
        registered = []
    if not registered:
        return "None yet (`python -m serving.register`, a stage of `make demo`)."
    lines = [f"| Model | versions | {alias} | its run | URI |", "|---|---|---|---|---|"]
    for m in registered:
        versions = client.search_model_versions(f"name = '{m.name}'")
        try:
            chosen = client.get_model_version_by_alias(m.name, alias)
            run = client.get_run(chosen.run_id).data.tags.get("mlflow.runName", chosen.run_id) if chosen.run_id else "-"
            cells = f"version {chosen.version} | {run} | `models:/{m.name}@{alias}`"
        except mlflow.exceptions.MlflowException:
            cells = "- | - | -"
        lines.append(f"| {m.name} | {len(versions)} | {cells} |")
    return "\n".join(lines)


def build_report(cfg: DictConfig) -> Path:
    """Write report.md and figures under ``cfg.report.output``; log them to MLflow (``report``)."""
    out = Path(cfg.report.output)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    uri = cfg.paths.mlflow_tracking_uri
    tables = collect_results(uri)
    found = findings(tables)
    judged, summary = findings_section(found), summary_table(tables)
    stats = pipeline_stats(uri)
    figs: dict[str, Optional[Path]] = {
        "P@10 per granularity": plot_granularities(tables.retrieval, out / "figures" / "p10_by_granularity.png"),
        "P@10 against sigma": plot_sigma(tables.retrieval, out / "figures" / "p10_vs_sigma.png"),
    }
    locations = {k: list(v) for k, v in cfg.report.locations.items()}
    data = FigureData(Path(cfg.paths.mcc_embeddings), Path(cfg.paths.shards_dir)) \
        if Path(cfg.paths.mcc_embeddings, "manifest.json").exists() else None
    f = _figures(cfg, "retrieval_checkpoints", data)
    if f is not None:
        figs["Retrieval grid"] = f.retrieval_grid(list(cfg.report.grid_tags), locations, cfg.report.grid_top,
                                                   out / "figures" / "retrieval_grid.png")
    f = _figures(cfg, "tagging_checkpoints", data)
    if f is not None:
        rows = _example_rows(data, list(cfg.report.faked_location_tags))
        figs["Faked locations"] = f.faked_locations(rows, locations, out / "figures" / "faked_locations.png")

    parts = [f"# {cfg.report.title}", "",
             "Ours (paper) in every cell: the paper's numbers are on full YFCC100M (docs/evaluation.md); ours on "
             f"the data this run used ({cfg.paths.raw_dir}).", "",
             "## Findings", "", FINDINGS_INTRO, "", judged, "",
             "## Summary", "", summary, "",
             "## Image tagging", "", tagging_table(tables.tagging), "",
             "## Image tagging, place names omitted", "", noplaces_table(tables.tagging), "",
             "## Location-agnostic retrieval", "", agnostic_retrieval_table(tables.retrieval), "",
             "## Location-sensitive retrieval (P@10)", "", location_table(tables.retrieval), "",
             queries_note(tables.retrieval), "",
             "## Location-sensitive retrieval, place-name queries omitted (P@10)", "",
             "Ours only: the paper reports no such table. For a place-name query the location is the tag; "
             "the other queries show how a model trades a concept against the place.", "",
             location_table(tables.retrieval, NOPLACES), "", queries_note(tables.retrieval, NOPLACES), "",
             "## Figures", ""]
    for title, path in figs.items():
        if path is not None:
            parts += [f"### {title}", "", f"![{title}](figures/{path.name})", ""]
    parts += ["## Registered models", "", registry_section(uri), ""]
    parts += ["## Pipeline", "", stats_section(stats), ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    (out / "results.json").write_text(json.dumps({**tables.to_json(), "findings": [x.to_json() for x in found]},
                                                 indent=2))
    if cfg.report.get("readme"):     # make readme-results: the findings and the summary into the README
        write_block(cfg.report.readme, "results", "\n\n".join([FINDINGS_INTRO, judged, summary]),
                    "make readme-results")
    _log_report(cfg, out)
    log.info("report: %s", report.resolve())
    return report


def _figures(cfg: DictConfig, key: str, data: Optional[FigureData]) -> Optional[Figures]:
    """Figures drawn with the first LocSens checkpoint of ``cfg.report[key]`` that exists."""
    candidates = list(cfg.report[key])
    checkpoint = next((Path(c) for c in candidates if Path(c).exists()), None)
    if checkpoint is None or data is None:
        log.warning("no LocSens checkpoint among %s or no MCC embeddings: its figure is skipped", candidates)
        return None
    return Figures(checkpoint, data)


def _example_rows(data: FigureData, tags: list[str]) -> list[int]:
    """Test images carrying the first of these tags that exist (one per tag), for figure 5."""
    rows = []
    truth = data.test["truth"]
    for tag in tags:
        idx = data.tags.get(tag)
        if idx is None:
            continue
        hits = np.unique(truth.rows()[truth.values == idx])
        if hits.size:
            rows.append(int(hits[0]))
    return rows[:3] or [0]


def _log_report(cfg: DictConfig, out: Path) -> None:
    with stage_run(REPORT, cfg.report.run_name, OmegaConf.to_container(cfg, resolve=True),
                   tracking_uri=cfg.paths.mlflow_tracking_uri, artifact_root=cfg.paths.get("mlflow_artifact_root")):
        mlflow.log_artifacts(str(out))
