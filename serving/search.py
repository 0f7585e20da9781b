"""Search an indexed gallery from the command line: tags for a photo at a place, photos for a tag near a place.

    python -m serving.search build [gallery.dir=outputs/search] [gallery.index=hnsw] [key=value ...]
    python -m serving.search tag --image PHOTO.jpg --lat 41.39 --lon 2.17 [--k 10] [--exact] [--json]
    python -m serving.search tag --photo-id 123 --lat 41.39 --lon 2.17
    python -m serving.search photos --tag beach --near 41.39,2.17 [--k 10] [--exact] [--json]

Settings (the gallery's folder, the export it indexes, the models, the shortlist sizes) come from
conf/serving.yaml with its ``paths``; override any as ``key=value``. ``build`` indexes a split of an
MCC embeddings export (:mod:`serving.gallery`) with the models that score it (a LocSens or
factorised checkpoint for tagging and one for retrieval, MCC for new photos), and records the
gallery as an MLflow run (experiment ``search``), from which ``python -m serving.register`` makes
the retrieval model. ``tag`` embeds the photo with MCC (or takes a gallery photo's embedding),
shortlists ``search.tags`` tags by MCC's cosine and ranks them with the tagging model at the given
place. ``photos`` shortlists ``search.images`` gallery photos near the tag in embedding space and
``search.nearby`` near the place on the globe, and ranks them with the retrieval model: the same
shortlist-and-rerank as ``evaluation.mode=rerank``. ``--exact`` scores everything instead.

Errors (a missing index, an unknown tag, coordinates out of range, a file that is not an image, a
bad setting) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import mlflow
import numpy as np
from omegaconf import DictConfig

from common.config import ConfigError, compose_config
from common.embeddings import EmbeddingsManifest
from common.files import file_stamp
from common.tracking import SEARCH, stage_run
from serving.gallery import MANIFEST, Gallery, GalleryError, build_gallery
from serving.scorers import ImageEmbedder, NotAModel, NotAnImage, Scorer
from training.evaluate.runs import model_tags
from training.index.ann import AnnSettings
from training.index.spatial import check_coordinates
from training.tracking import CHECKPOINT_TAG, STAMPS_TAG

log = logging.getLogger("serving.search")

ROLES = ("tagger", "retriever", "image_model")


def check_k(k: int, cfg: DictConfig) -> int:
    """``k`` within 1 .. ``search.max_k``, or a ValueError saying the bound."""
    if not 1 <= k <= cfg.search.max_k:
        raise ValueError(f"k={k}: ask for 1 to {cfg.search.max_k} answers (search.max_k)")
    return k


# --- commands ----------------------------------------------------------------------------------------

def index_settings(g: DictConfig) -> AnnSettings:
    """``gallery.index`` and ``gallery.index_options`` as index settings, or a ValueError naming the key."""
    options = dict(g.get("index_options") or {})
    known = {f.name for f in fields(AnnSettings)} - {"kind"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"gallery.index_options: unknown setting(s) {unknown}; known: {sorted(known)}")
    return AnnSettings(kind=g.index, **options)


def cmd_build(args, cfg: DictConfig) -> dict[str, Any]:
    g = cfg.gallery
    models = {role: g.get(role) or None for role in ROLES}
    for role, path in models.items():
        if path and not Path(path).is_file():
            raise GalleryError(f"gallery.{role}={path}: no such checkpoint (set gallery.{role}=null for none)")
    if not models["image_model"]:
        models["image_model"] = EmbeddingsManifest.read(g.embeddings_dir).extra.get("checkpoint")
    models = {k: str(Path(v).resolve()) if v else None for k, v in models.items()}   # as training runs name them
    settings = index_settings(g)
    manifest = build_gallery(g.embeddings_dir, g.dir, splits=list(g.splits), settings=settings, models=models)
    summary = {**asdict(manifest), "index_dir": str(Path(g.dir).resolve())}
    tags = {"gallery_dir": summary["index_dir"], "embeddings_export_id": manifest.embeddings_export_id}
    if models["retriever"]:      # what the registry step makes the retrieval model from
        retriever = Scorer(models["retriever"])
        stamps = {p: file_stamp(p) for p in (models["retriever"], str(Path(g.dir).resolve() / MANIFEST))}
        tags.update({**model_tags(retriever.family, ("retrieval",)), CHECKPOINT_TAG: models["retriever"],
                     STAMPS_TAG: json.dumps(stamps)})
    with stage_run(SEARCH, "gallery", {"splits": list(g.splits), "index": asdict(settings), "models": models,
                                       "embeddings_dir": manifest.embeddings_dir},
                   tracking_uri=cfg.paths.mlflow_tracking_uri, artifact_root=cfg.paths.mlflow_artifact_root,
                   tags=tags) as run:
        mlflow.log_metrics({"gallery/photos": manifest.rows, "gallery/tags": manifest.num_tags,
                            "gallery/build_seconds": manifest.seconds})
        mlflow.log_dict(asdict(manifest), "gallery_manifest.json")
        summary["mlflow_run_id"] = run.info.run_id
    return summary


def cmd_tag(args, cfg: DictConfig) -> dict[str, Any]:
    check_coordinates(args.lat, args.lon)
    k = check_k(args.k, cfg)
    gallery = Gallery(cfg.gallery.dir)
    if args.image is not None:
        path = Path(args.image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise GalleryError(f"{path}: cannot read the image ({exc.strerror or exc})") from exc
        try:
            image = ImageEmbedder(gallery.model("image_model"))(data)
        except NotAnImage as exc:
            raise GalleryError(f"{path}: {exc}") from exc
        source = str(args.image)
    else:
        row = gallery.row_of_photo(args.photo_id)
        image = np.array(gallery.embedding[row:row + 1])
        source = f"photo {args.photo_id}"
    scorer = Scorer(gallery.model("tagger"))
    shortlist = None if args.exact else int(cfg.search.tags)
    tags, scores = scorer.top_tags(image, gallery.tag_vectors, args.lat, args.lon, k, shortlist)
    scored = len(gallery.tag_names) if shortlist is None else min(max(shortlist, k), len(gallery.tag_names))
    return {"query": {"photo": source, "lat": args.lat, "lon": args.lon, "model": scorer.kind, "scored": scored},
            "tags": [{"rank": i + 1, "tag": gallery.tag_names[t], "score": float(s)}
                     for i, (t, s) in enumerate(zip(tags, scores))]}


def parse_near(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError:
        raise GalleryError(f"--near {text!r}: expected LAT,LON, e.g. --near 41.39,2.17") from None
    check_coordinates(lat, lon)
    return lat, lon


def cmd_photos(args, cfg: DictConfig) -> dict[str, Any]:
    lat, lon = parse_near(args.near)
    k = check_k(args.k, cfg)
    gallery = Gallery(cfg.gallery.dir)
    t = gallery.tag_index(args.tag)
    scorer = Scorer(gallery.model("retriever"))
    shortlist = None if args.exact else (int(cfg.search.images), int(cfg.search.nearby))
    photos, scored = gallery.photos(scorer, t, lat, lon, k, shortlist)
    return {"query": {"tag": gallery.tag_names[t], "lat": lat, "lon": lon, "model": scorer.kind,
                      "scored": scored, "gallery": len(gallery)}, "photos": photos}


COMMANDS = {"build": cmd_build, "tag": cmd_tag, "photos": cmd_photos}


# --- output ------------------------------------------------------------------------------------------

def render(command: str, result: dict[str, Any]) -> str:
    if command == "build":
        return (f"indexed {result['rows']:,} photos of {result['splits']} ({result['index']['kind']} index) "
                f"in {result['seconds']:.1f} s -> {result['index_dir']} (mlflow run {result['mlflow_run_id']})")
    q = result["query"]
    if command == "tag":
        lines = [f"top tags for {q['photo']} at {q['lat']:.4f},{q['lon']:.4f} "
                 f"({q['model']}, {q['scored']} tags scored)"]
        lines += [f"{r['rank']:>4}  {r['tag']:<30} {r['score']:>9.4f}" for r in result["tags"]]
        return "\n".join(lines)
    lines = [f"photos for #{q['tag']} near {q['lat']:.4f},{q['lon']:.4f} ({q['model']}, {q['scored']:,} of "
             f"{q['gallery']:,} photos scored)",
             f"{'rank':>4}  {'photo_id':>12}  {'latitude':>9}  {'longitude':>10}  {'km':>9}  {'score':>9}  tagged"]
    lines += [f"{r['rank']:>4}  {r['photo_id']:>12}  {r['latitude']:>9.4f}  {r['longitude']:>10.4f}  {r['km']:>9.1f}  "
              f"{r['score']:>9.4f}  {'yes' if r['tagged'] else 'no'}" for r in result["photos"]]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.search", description=__doc__.split("\n")[0],
                                epilog="Settings: key=value overrides of conf/serving.yaml, e.g. gallery.dir=DIR "
                                       "search.tags=200 paths.root_dir=/data/locsens")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="index a split of an MCC embeddings export (gallery.embeddings_dir) for search")
    for name, help_ in (("tag", "top tags for a photo at a location"),
                        ("photos", "gallery photos for a tag near a location")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--k", type=int, default=None, help="answers (default search.k)")
        sp.add_argument("--exact", action="store_true", help="score every tag (photo) instead of a shortlist")
        sp.add_argument("--json", action="store_true", help="print JSON")
    t = sub.choices["tag"]
    which = t.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", type=Path, help="a JPEG (embedded with the gallery's MCC model)")
    which.add_argument("--photo-id", type=int, help="a gallery photo (its stored embedding)")
    t.add_argument("--lat", type=float, required=True)
    t.add_argument("--lon", type=float, required=True)
    ph = sub.choices["photos"]
    ph.add_argument("--tag", required=True)
    ph.add_argument("--near", required=True, metavar="LAT,LON")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = parser().parse_known_args(sys.argv[1:] if argv is None else list(argv))
    # A build says how far it has got (minutes at millions of photos); a query prints only its answer.
    logging.basicConfig(level=logging.INFO if args.command == "build" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = compose_config("serving", overrides)      # the arguments that are not flags: key=value settings
        if getattr(args, "k", 0) is None:
            args.k = int(cfg.search.k)
        result = COMMANDS[args.command](args, cfg)
    except (GalleryError, NotAModel, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if getattr(args, "json", False) else render(args.command, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
