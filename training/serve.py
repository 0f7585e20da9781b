"""A REST service over the registered models: ``python -m training.serve`` (``make serve``).

    python -m training.serve [--tagging models:/locsens-tagging@champion]
        [--retrieval models:/locsens-retrieval@champion] [--shards data/work/shards]
        [--host 127.0.0.1] [--port 8000]

- ``POST /tag?lat=41.39&lon=2.17&k=10`` with a JPEG as the body (``Content-Type: image/jpeg``), or
  ``POST /tag?photo_id=123&lat=..&lon=..`` for a sample photo: the top tags and scores there.
- ``GET /photos?tag=beach&lat=41.39&lon=2.17&k=10``: the indexed gallery's best photos for the tag
  near the place, with distances and scores, and each one's thumbnail URL.
- ``GET /photo/{photo_id}.jpg``: a gallery or sample photo; ``GET /samples``: sample photo ids with
  where they were taken; ``GET /health``.
- ``GET /``: a web page over all of it (training/web), which works offline.

Models load by registered name and alias through MLflow (the tracking store's registry). Bad
input answers 4xx with ``{"error": "<one line>"}`` and the service keeps serving: not an image
(415), a body over ``--max-bytes`` (413), coordinates out of range or a bad ``k`` (422), an unknown
tag or photo (404, with close matches for a tag). Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

log = logging.getLogger("training.serve")

MAX_BYTES = 10 << 20
MAX_K = 100


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class PhotoStore:
    """JPEG bytes of a split's photos by photo_id, from the shards: an index of (file, row group,
    row) built from the photo_id column alone, and a few decoded row groups kept (LRU)."""

    def __init__(self, shards_dir: str | Path, split: str = "test", cache_groups: int = 8):
        from common.contract import read_manifest

        self.dir = Path(shards_dir)
        manifest = read_manifest(self.dir)
        ids, where = [], []
        for f, info in enumerate(manifest.splits[split].files):
            pf = pq.ParquetFile(self.dir / info.path)
            for g in range(pf.metadata.num_row_groups):
                col = pf.read_row_group(g, columns=["photo_id"]).column(0).to_numpy()
                ids.append(col)
                where.append(np.c_[np.full(col.size, f), np.full(col.size, g), np.arange(col.size)])
        self.files = [self.dir / info.path for info in manifest.splits[split].files]
        ids_all = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        order = np.argsort(ids_all)
        self.ids = ids_all[order]
        self.where = (np.concatenate(where) if where else np.zeros((0, 3), dtype=np.int64))[order]
        self.cache: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.cache_groups = cache_groups

    def __contains__(self, photo_id: int) -> bool:
        i = np.searchsorted(self.ids, photo_id)
        return bool(i < self.ids.size and self.ids[i] == photo_id)

    def jpeg(self, photo_id: int) -> bytes:
        if photo_id not in self:
            raise RequestError(404, f"photo {photo_id} is not among the {self.ids.size:,} photos served")
        f, g, r = (int(x) for x in self.where[np.searchsorted(self.ids, photo_id)])
        key = (f, g)
        if key not in self.cache:
            self.cache[key] = pq.ParquetFile(self.files[f]).read_row_group(g, columns=["image", "latitude",
                                                                                        "longitude"])
            while len(self.cache) > self.cache_groups:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return self.cache[key].column("image")[r].as_py()

    def samples(self, n: int) -> list[dict[str, Any]]:
        """``n`` photos spread over the split (every len/n-th by photo_id), with their places."""
        picks = self.ids[np.linspace(0, self.ids.size - 1, min(n, self.ids.size)).astype(int)] if self.ids.size else []
        out = []
        for pid in picks:
            f, g, r = (int(x) for x in self.where[np.searchsorted(self.ids, pid)])
            self.jpeg(int(pid))
            t = self.cache[(f, g)]
            out.append({"photo_id": int(pid), "latitude": float(t.column("latitude")[r].as_py()),
                        "longitude": float(t.column("longitude")[r].as_py())})
        return out


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise RequestError(422, f"k={k}: must be between 1 and {MAX_K}")
    return k


def check_place(lat: float, lon: float) -> None:
    from training.index.spatial import check_coordinates

    try:
        check_coordinates(lat, lon)
    except ValueError as exc:
        raise RequestError(422, str(exc)) from None


class Service:
    """The loaded models and photos, and the answers; no HTTP here (see :func:`app`)."""

    def __init__(self, tagging: str, retrieval: Optional[str], shards_dir: Optional[str], max_bytes: int = MAX_BYTES):
        import mlflow

        self.tagging = mlflow.pyfunc.load_model(tagging)
        self.retrieval = mlflow.pyfunc.load_model(retrieval) if retrieval else None
        self.photos = PhotoStore(shards_dir) if shards_dir and Path(shards_dir, "manifest.json").exists() else None
        self.max_bytes = max_bytes
        self.names = {"tagging": tagging, "retrieval": retrieval}

    def tag(self, body: bytes, photo_id: Optional[int], lat: float, lon: float, k: int) -> dict[str, Any]:
        check_place(lat, lon)
        check_k(k)
        if photo_id is not None:
            if self.photos is None:
                raise RequestError(404, "no sample photos are served (start with --shards)")
            body = self.photos.jpeg(photo_id)
        if not body:
            raise RequestError(400, "send a JPEG as the request body, or photo_id=<a sample photo>")
        if len(body) > self.max_bytes:
            raise RequestError(413, f"image of {len(body):,} bytes is over the limit of {self.max_bytes:,}")
        from training.serving.scorers import NotAnImage

        try:
            out = self.tagging.predict(pd.DataFrame({"image": [body], "latitude": [lat], "longitude": [lon]}),
                                       params={"k": k})
        except NotAnImage as exc:
            raise RequestError(415, f"the body is {exc}") from None
        return {"lat": lat, "lon": lon, "model": self.names["tagging"],
                "tags": [{"tag": t, "score": float(s)} for t, s in zip(out["tags"][0], out["scores"][0])]}

    def search(self, tag: str, lat: float, lon: float, k: int) -> dict[str, Any]:
        check_place(lat, lon)
        check_k(k)
        if self.retrieval is None:
            raise RequestError(404, "no retrieval model is served (start with --retrieval)")
        from training.index.gallery import GalleryError

        try:
            out = self.retrieval.predict(pd.DataFrame({"tag": [tag], "latitude": [lat], "longitude": [lon]}),
                                         params={"k": k})
        except GalleryError as exc:
            raise RequestError(404, str(exc)) from None
        photos = [{"photo_id": int(p), "latitude": float(la), "longitude": float(lo), "km": float(d), "score": float(s),
                   "thumbnail": f"/photo/{int(p)}.jpg"}
                  for p, la, lo, d, s in zip(out["photo_ids"][0], out["latitudes"][0], out["longitudes"][0],
                                             out["km"][0], out["scores"][0])]
        return {"tag": tag, "lat": lat, "lon": lon, "model": self.names["retrieval"], "photos": photos}


def app(service: Service):
    """The FastAPI application around a :class:`Service`."""
    api = FastAPI(title="LocSens", docs_url=None, redoc_url=None)

    @api.exception_handler(RequestError)
    async def refused(_, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', [])[1:])}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    @api.exception_handler(Exception)
    async def failed(_, exc: Exception):   # a bug, not the request: say so in one line, keep serving
        log.exception("request failed")
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    world: list = []

    @api.get("/")
    def page():
        from training.web import PAGE

        return Response(PAGE.read_text(encoding="utf-8"), media_type="text/html")

    @api.get("/world.json")
    def world_json():
        if not world:
            from training.web import world_points

            world.extend(world_points())
        return world

    @api.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": service.names, "photos": 0 if service.photos is None else
                int(service.photos.ids.size)}

    @api.post("/tag")
    async def tag(request: Request, lat: float, lon: float, k: int = 10, photo_id: Optional[int] = None):
        declared = int(request.headers.get("content-length") or 0)
        if declared > service.max_bytes:
            raise RequestError(413, f"image of {declared:,} bytes is over the limit of {service.max_bytes:,}")
        return service.tag(await request.body(), photo_id, lat, lon, k)

    @api.get("/photos")
    def photos(tag: str, lat: float, lon: float, k: int = 10):
        return service.search(tag, lat, lon, k)

    @api.get("/photo/{photo_id}.jpg")
    def photo(photo_id: int):
        if service.photos is None:
            raise RequestError(404, "no photos are served (start with --shards)")
        return Response(service.photos.jpeg(photo_id), media_type="image/jpeg")

    @api.get("/samples")
    def samples(n: int = 12):
        return [] if service.photos is None else service.photos.samples(max(1, min(n, 100)))

    return api


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.serve", description=__doc__.split("\n")[0])
    p.add_argument("--tagging", default="models:/locsens-tagging@champion")
    p.add_argument("--retrieval", default="models:/locsens-retrieval@champion", help="'' for none")
    p.add_argument("--shards", default="data/work/shards", help="sample photos and thumbnails (test split)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import mlflow
    import uvicorn

    from common.tracking import check_uri

    try:
        mlflow.set_tracking_uri(check_uri(args.tracking_uri))
        mlflow.set_registry_uri(args.tracking_uri)
        service = Service(args.tagging, args.retrieval or None, args.shards, args.max_bytes)
    except Exception as exc:   # a missing model or store: one line, not a traceback
        print(f"error: cannot load the models ({args.tagging}, {args.retrieval}) from {args.tracking_uri}: "
              f"{str(exc).splitlines()[0]} (register them first: python -m training.register)", file=sys.stderr)
        return 2
    log.info("serving %s and %s on http://%s:%d", args.tagging, args.retrieval, args.host, args.port)
    uvicorn.run(app(service), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
