"""Search an indexed gallery from the command line: tags for a photo at a place, photos for a tag near a place.

    python -m training.search build [--embeddings outputs/mcc/embeddings] [--out outputs/search]
    python -m training.search tag --image PHOTO.jpg --lat 41.39 --lon 2.17 [--k 10]
    python -m training.search tag --photo-id 123 --lat 41.39 --lon 2.17
    python -m training.search photos --tag beach --near 41.39,2.17 [--k 10]

``build`` indexes a split of an MCC embeddings export (:mod:`training.index.gallery`) with the
models that score it (a LocSens or factorised checkpoint for tagging and one for retrieval, MCC
for new photos), and records the index as an MLflow run (experiment ``search``). ``tag`` embeds the
photo with MCC (or takes a gallery photo's embedding), shortlists tags by MCC's cosine and ranks
them with the tagging model at the given place. ``photos`` shortlists gallery photos near the tag
in embedding space and near the place on the globe, and ranks them with the retrieval model: the
same shortlist-and-rerank as ``evaluation.mode=rerank``. ``--exact`` scores everything instead.

Errors (a missing index, an unknown tag, coordinates out of range, a file that is not an image)
print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence


from training.index.ann import KINDS, AnnSettings
from training.index.gallery import Gallery, GalleryError, build_gallery
from training.index.spatial import check_coordinates
from training.serving.scorers import ImageEmbedder, NotAnImage, Scorer

log = logging.getLogger("training.search")

DEFAULT_INDEX = "outputs/search"
DEFAULTS = {"embeddings": "outputs/mcc/embeddings", "tagger": "outputs/locsens_raw/checkpoints/best.ckpt",
            "retriever": "outputs/locsens_raw_retrieval/checkpoints/best.ckpt"}


# --- commands ----------------------------------------------------------------------------------------

def cmd_build(args) -> dict[str, Any]:
    models = {"tagger": args.tagger, "retriever": args.retriever, "image_model": args.image_model}
    for role, path in models.items():
        if path and not Path(path).is_file():
            raise GalleryError(f"--{role.replace('_', '-')} {path}: no such checkpoint")
    if not models["image_model"]:
        from common.embeddings import EmbeddingsManifest
        models["image_model"] = EmbeddingsManifest.read(args.embeddings).extra.get("checkpoint")
    models = {k: str(Path(v).resolve()) if v else None for k, v in models.items()}   # as training runs name them
    settings = AnnSettings(kind=args.index_kind)
    manifest = build_gallery(args.embeddings, args.out, splits=args.splits, settings=settings, models=models)
    summary = {**asdict(manifest), "index_dir": str(Path(args.out).resolve())}
    if args.tracking_uri:
        import mlflow

        from common.tracking import stage_run
        with stage_run("search", "gallery", {"splits": args.splits, "index": asdict(settings), "models": models,
                                             "embeddings_dir": manifest.embeddings_dir},
                       tracking_uri=args.tracking_uri, artifact_root=args.artifact_root,
                       tags={"gallery_dir": summary["index_dir"],
                             "embeddings_export_id": manifest.embeddings_export_id}) as run:
            mlflow.log_metrics({"gallery/photos": manifest.rows, "gallery/tags": manifest.num_tags,
                                "gallery/build_seconds": manifest.seconds})
            mlflow.log_dict(asdict(manifest), "gallery_manifest.json")
            summary["mlflow_run_id"] = run.info.run_id
            if models["retriever"] and args.log_model:
                from training.index.gallery import Gallery
                from training.serving.pyfunc import log_model

                gallery = Gallery(args.out)
                row = 0
                tag = gallery.tag_names[int(gallery.truth.row(row)[0])] if gallery.truth.counts[row] else \
                    gallery.tag_names[0]
                uri = log_model("retrieval", gallery=summary["index_dir"], retriever_checkpoint=models["retriever"],
                                example_tag=tag, example_place=(float(gallery.latitude[row]),
                                                                float(gallery.longitude[row])))
                mlflow.set_tag("model_uri", uri)
                summary["model_uri"] = uri
    return summary


def cmd_tag(args) -> dict[str, Any]:
    check_coordinates(args.lat, args.lon)
    gallery = Gallery(args.index)
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
        image = gallery.embedding[gallery.row_of_photo(args.photo_id)][None]
        source = f"photo {args.photo_id}"
    scorer = Scorer(gallery.model("tagger"))
    tags, scores = scorer.top_tags(image, gallery.tag_vectors, args.lat, args.lon, args.k,
                                   None if args.exact else args.shortlist)
    scored = len(gallery.tag_names) if args.exact else min(max(args.shortlist, args.k), len(gallery.tag_names))
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


def cmd_photos(args) -> dict[str, Any]:
    lat, lon = parse_near(args.near)
    gallery = Gallery(args.index)
    t = gallery.tag_index(args.tag)
    scorer = Scorer(gallery.model("retriever"))
    photos, scored = gallery.photos(scorer, t, lat, lon, args.k, None if args.exact else (args.candidates, args.nearby))
    return {"query": {"tag": gallery.tag_names[t], "lat": lat, "lon": lon, "model": scorer.kind,
                      "scored": scored, "gallery": len(gallery)}, "photos": photos}


# --- output ------------------------------------------------------------------------------------------

def render(command: str, result: dict[str, Any]) -> str:
    if command == "build":
        return (f"indexed {result['rows']:,} photos of {result['splits']} ({result['index']['kind']} index) "
                f"in {result['seconds']:.1f} s -> {result['index_dir']}"
                + (f" (mlflow run {result['mlflow_run_id']})" if result.get("mlflow_run_id") else ""))
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
    p = argparse.ArgumentParser(prog="python -m training.search", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="index a split of an MCC embeddings export for search")
    b.add_argument("--embeddings", default=DEFAULTS["embeddings"], help="MCC embeddings export")
    b.add_argument("--splits", nargs="+", default=["test"])
    b.add_argument("--tagger", default=None,
                   help=f"tagging model checkpoint (default {DEFAULTS['tagger']} if present; '' for none)")
    b.add_argument("--retriever", default=None,
                   help=f"retrieval model checkpoint (default {DEFAULTS['retriever']} if present; '' for none)")
    b.add_argument("--image-model", default=None, help="MCC checkpoint (default: the one the export names)")
    b.add_argument("--index-kind", default="auto", choices=KINDS, help="auto: flat up to 100k photos, hnsw above")
    b.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"),
                   help="MLflow store the build is recorded in ('' to skip)")
    b.add_argument("--artifact-root", default="mlartifacts")
    b.add_argument("--no-log-model", dest="log_model", action="store_false",
                   help="do not log the gallery with the retriever as an MLflow Model (it copies the gallery)")
    for name, sp in (("tag", sub.add_parser("tag", help="top tags for a photo at a location")),
                     ("photos", sub.add_parser("photos", help="gallery photos for a tag near a location"))):
        sp.add_argument("--k", type=int, default=10)
        sp.add_argument("--exact", action="store_true", help="score every tag (photo) instead of a shortlist")
        sp.add_argument("--json", action="store_true", help="print JSON")
    for sp in (b, sub.choices["tag"], sub.choices["photos"]):
        sp.add_argument("--index" if sp is not b else "--out", default=DEFAULT_INDEX, help="gallery directory")
    t = sub.choices["tag"]
    which = t.add_mutually_exclusive_group(required=True)
    which.add_argument("--image", type=Path, help="a JPEG (embedded with the index's MCC model)")
    which.add_argument("--photo-id", type=int, help="a gallery photo (its stored embedding)")
    t.add_argument("--lat", type=float, required=True)
    t.add_argument("--lon", type=float, required=True)
    t.add_argument("--shortlist", type=int, default=500, help="tags shortlisted by MCC's cosine")
    ph = sub.choices["photos"]
    ph.add_argument("--tag", required=True)
    ph.add_argument("--near", required=True, metavar="LAT,LON")
    ph.add_argument("--candidates", type=int, default=500, help="photos shortlisted near the tag (FAISS)")
    ph.add_argument("--nearby", type=int, default=200, help="photos shortlisted near the place")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    if args.command == "build":   # the demo's models by default; "" for none
        for role in ("tagger", "retriever"):
            given = getattr(args, role)
            setattr(args, role, (given or None) if given is not None else
                    (DEFAULTS[role] if Path(DEFAULTS[role]).is_file() else None))
    try:
        result = {"build": cmd_build, "tag": cmd_tag, "photos": cmd_photos}[args.command](args)
    except (GalleryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if getattr(args, "json", False) else render(args.command, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
