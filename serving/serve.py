"""A REST service over the registered models: ``python -m serving.serve`` (``make serve``).

    python -m serving.serve [serve.port=8000] [serve.tagging=models:/locsens-tagging@champion]
        [serve.retrieval=models:/locsens-retrieval@champion] [serve.shards_dir=data/work/shards]

Settings: the ``serve`` section of conf/serving.yaml (and its ``paths``, for the tracking store
the models are registered in); any key can be overridden as ``key=value``.

- ``POST /tag?lat=41.39&lon=2.17&k=10`` with a JPEG as the body (``Content-Type: image/jpeg``), or
  ``POST /tag?photo_id=123&lat=..&lon=..`` for a sample photo: the top tags and scores there.
- ``GET /photos?tag=beach&lat=41.39&lon=2.17&k=10``: the indexed gallery's best photos for the tag
  near the place, with distances and scores, and each one's thumbnail URL.
- ``GET /photo/{photo_id}.jpg``: a gallery or sample photo; ``GET /samples``: sample photo ids with
  where they were taken; ``GET /health``.
- ``GET /``: a web page over all of it (serving/web), which works offline.

Models load by registered name and alias through MLflow (the tracking store's registry), or
retrieval straight from a gallery directory (``serve.gallery``). The models run on a bounded pool
of ``serve.workers`` threads with ``serve.queue`` places to wait (:mod:`serving.admission`): the
event loop only moves bytes, so ``/health`` and thumbnails answer while the models are busy, and a
request that finds no room answers 503 at once. Bad input answers 4xx with ``{"error": "<one
line>"}`` and the service keeps serving: not a JPEG, PNG or WebP image (415); a body over
``serve.max_bytes``, counted as it streams in whatever the headers say, or an image over
``serve.max_pixels`` (413); coordinates out of range or not finite, or a ``k`` outside 1 ..
``search.max_k`` (422); an unknown tag or photo (404, with close matches for a tag). Anything else
answers a generic 500 with a request id, which the log holds with the traceback. Binds 127.0.0.1
unless told otherwise.
"""
from __future__ import annotations

import logging
import sys
import uuid
from typing import Any, Optional, Sequence

import mlflow
import pandas as pd
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from omegaconf import DictConfig

from common.config import ConfigError, compose_config
from common.contract import MANIFEST_NAME, shard_root
from common.tracking import check_uri, first_line
from serving import web
from serving.admission import Admission, Busy
from serving.gallery import GalleryError, GalleryManifest
from serving.photos import PhotoStore, UnknownPhoto
from serving.pyfunc import PhotoRetriever
from serving.scorers import ImageTooLarge, NotAnImage, check_image
from training.index.spatial import check_coordinates

log = logging.getLogger("serving.serve")


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_place(lat: float, lon: float) -> None:
    try:
        check_coordinates(lat, lon)
    except ValueError as exc:
        raise RequestError(422, str(exc)) from None


class GalleryRetrieval:
    """A gallery directory's retrieval model (the one its manifest names), answering as the
    registered :class:`serving.pyfunc.PhotoRetriever` does, without copying the gallery into an
    MLflow model: how a gallery of millions of photos is served."""

    def __init__(self, directory: str):
        manifest = GalleryManifest.read(directory)
        checkpoint = manifest.models.get("retriever")
        if not checkpoint:
            raise GalleryError(f"{directory}: the gallery was built without a retrieval model (gallery.retriever)")
        self.context = mlflow.pyfunc.PythonModelContext(
            artifacts={"gallery": str(directory), "retriever_checkpoint": checkpoint}, model_config={})
        self.model = PhotoRetriever()
        self.model.load_context(self.context)

    def predict(self, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        return self.model.predict(self.context, model_input, params)


class Service:
    """The loaded models and photos, and the answers; no HTTP here (see :func:`app`)."""

    def __init__(self, tagging: str, retrieval: Optional[str], shards_dir: Optional[str], max_bytes: int,
                 max_k: int, *, gallery: Optional[str] = None, max_pixels: int = 40_000_000, cache_groups: int = 8):
        self.tagging = mlflow.pyfunc.load_model(tagging)
        if gallery:
            self.retrieval, retrieval = GalleryRetrieval(gallery), f"gallery {gallery}"
        else:
            self.retrieval = mlflow.pyfunc.load_model(retrieval) if retrieval else None
        self.photos = (PhotoStore(shards_dir, cache_groups=cache_groups)
                       if shards_dir and (shard_root(shards_dir) / MANIFEST_NAME).exists() else None)
        self.max_bytes, self.max_k, self.max_pixels = max_bytes, max_k, max_pixels
        self.names = {"tagging": tagging, "retrieval": retrieval}

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Service":
        s = cfg.serve
        return cls(s.tagging, s.retrieval or None, s.shards_dir or None, int(s.max_bytes), int(cfg.search.max_k),
                   gallery=s.get("gallery") or None, max_pixels=int(s.max_pixels),
                   cache_groups=int(s.photo_cache_groups))

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise RequestError(422, f"k={k}: must be between 1 and {self.max_k} (search.max_k)")
        return k

    def jpeg(self, photo_id: int) -> bytes:
        if self.photos is None:
            raise RequestError(404, "no photos are served (set serve.shards_dir)")
        try:
            return self.photos.jpeg(photo_id)
        except UnknownPhoto as exc:
            raise RequestError(404, str(exc)) from None

    def tag(self, body: bytes, photo_id: Optional[int], lat: float, lon: float, k: int) -> dict[str, Any]:
        check_place(lat, lon)
        self.check_k(k)
        if photo_id is not None:
            body = self.jpeg(photo_id)
        if not body:
            raise RequestError(400, "send a JPEG as the request body, or photo_id=<a sample photo>")
        if len(body) > self.max_bytes:
            raise RequestError(413, f"image of {len(body):,} bytes is over the limit of {self.max_bytes:,}")
        try:
            check_image(body, self.max_pixels)
            out = self.tagging.predict(pd.DataFrame({"image": [body], "latitude": [lat], "longitude": [lon]}),
                                       params={"k": k})
        except NotAnImage as exc:
            raise RequestError(415, f"the body is {exc}") from None
        except ImageTooLarge as exc:
            raise RequestError(413, f"the body is {exc} (serve.max_pixels)") from None
        return {"lat": lat, "lon": lon, "model": self.names["tagging"],
                "tags": [{"tag": t, "score": float(s)} for t, s in zip(out["tags"][0], out["scores"][0])]}

    def search(self, tag: str, lat: float, lon: float, k: int) -> dict[str, Any]:
        check_place(lat, lon)
        self.check_k(k)
        if self.retrieval is None:
            raise RequestError(404, "no retrieval model is served (set serve.retrieval)")
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


def app(service: Service, admission: Admission):
    """The FastAPI application around a :class:`Service`, its model work on ``admission``'s pool."""
    api = FastAPI(title="LocSens", docs_url=None, redoc_url=None)

    @api.middleware("http")
    async def request_id(request: Request, call_next):
        request.state.id = uuid.uuid4().hex[:12]
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.id
        return response

    @api.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @api.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @api.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', [])[1:])}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    @api.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):   # a bug, not the request: logged whole, answered generic
        rid = getattr(request.state, "id", None) or uuid.uuid4().hex[:12]
        log.error("request %s (%s %s) failed", rid, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error (request {rid}; the service log has the details)",
                             "request_id": rid}, status_code=500, headers={"X-Request-ID": rid})

    world: list = []

    @api.get("/")
    def page():
        return Response(web.PAGE.read_text(encoding="utf-8"), media_type="text/html")

    @api.get("/world.json")
    def world_json():
        if not world:
            world.extend(web.world_points())
        return world

    @api.get("/health")
    async def health() -> dict[str, Any]:       # on the event loop: answers while every worker is busy
        return {"status": "ok", "models": service.names, "photos": 0 if service.photos is None else
                int(service.photos.ids.size), "busy": admission.admitted}

    @api.post("/tag")
    async def tag(request: Request, lat: float, lon: float, k: int = 10, photo_id: Optional[int] = None):
        return await admission.run(service.tag, await read_body(request, service.max_bytes), photo_id, lat, lon, k)

    @api.get("/photos")
    async def photos(tag: str, lat: float, lon: float, k: int = 10):
        return await admission.run(service.search, tag, lat, lon, k)

    @api.get("/photo/{photo_id}.jpg")
    def photo(photo_id: int):
        return Response(service.jpeg(photo_id), media_type="image/jpeg")

    @api.get("/samples")
    def samples(n: int = 12):
        return [] if service.photos is None else service.photos.samples(max(1, min(n, 100)))

    return api


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes: a declared length is
    checked first, and a chunked body, which declares none, is counted as it arrives."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"image of {int(declared):,} bytes is over the limit of {limit:,}")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"image of more than {limit:,} bytes (the limit; serve.max_bytes)")
        parts.append(chunk)
    return b"".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = compose_config("serving", argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = cfg.serve
    try:
        uri = check_uri(cfg.paths.mlflow_tracking_uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        service = Service.from_config(cfg)
    except Exception as exc:   # a missing model or store: one line, not a traceback
        print(f"error: cannot load the models ({s.tagging}, {s.retrieval}) from {cfg.paths.mlflow_tracking_uri}: "
              f"{first_line(exc)} (register them first: python -m serving.register)", file=sys.stderr)
        return 2
    try:
        admission = Admission(int(s.workers), int(s.queue))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("serving %s and %s on http://%s:%d (%d workers, %d waiting at most)", service.names["tagging"],
             service.names["retrieval"], s.host, s.port, admission.workers, admission.queue)
    try:
        uvicorn.run(app(service, admission), host=s.host, port=int(s.port), log_level="warning")
    finally:
        admission.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
