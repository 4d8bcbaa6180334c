"""The web service: upload an X-ray, get the pneumonia probability and its CAM (FastAPI, pneumocam[serve]).

Safety, because uploads can carry patient data and can be hostile:
- binds to 127.0.0.1 unless told otherwise; an optional bearer token guards the /v1 endpoints; bound to
  loopback without a token, a request whose Host header names another host is refused (DNS rebinding);
- every request body is counted as it arrives (chunked uploads too) and answered 413 once it passes the
  upload limit, before more is read or spooled to disk; what a decode would allocate (longer side, aspect
  ratio, .npy shape and dtype, an embedded JPEG's own size) is judged from the header first (limits.py);
  a MemoryError is a 413; unreadable or unsupported files get 4xx JSON messages naming no server path;
- an upload lives only in memory and in a temporary file that is deleted in a `finally`;
- logs carry sizes, timings and status codes only: no file names, pixel data or DICOM fields;
- at most `max_concurrency` uploads are decoded at once, and at most `max_queue` more wait; the rest get 503.
The answer carries the probability, the call and the CAM's 7x7 cells as numbers; its PNG pictures (blended
overlay, colour layer, model input) only when `?pictures=` asks for them, since drawing them costs about a third
as much as the forward pass itself. Decoded images go through one DynamicBatcher: concurrent requests share a
forward pass (up to `max_batch` images, or `max_wait_ms` after the first), which keeps throughput up under load.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from pneumocam.config import ServeConfig
from pneumocam.data.limits import TOO_LARGE
from pneumocam.data.metadata import normalise
from pneumocam.data.readers import ImageReadError
from pneumocam.deploy.batching import DynamicBatcher
from pneumocam.deploy.http_guards import BodyLimit, LoopbackHostOnly, is_loopback, resolve_token
from pneumocam.deploy.predictor import LoadedImage, Prediction, Predictor
from pneumocam.explain.overlay import ShownMap, colour_bar_description, layer_png, overlay_map, to_png
from pneumocam.provenance import without_machine_paths

log = logging.getLogger(__name__)
STATIC = Path(__file__).parents[1] / "static"  # package data of pneumocam itself
# 2: /v1/predict answers "predicted" (the model's 0/1 call) where version 1 said "label"; 3: its pictures come on
# request (?pictures=), the CAM's cells always (see CHANGELOG.md)
API_VERSION = 3
# ?pictures= names -> the answer's fields; each costs 1.5-7 ms of a core per answer, so only those asked for are drawn
PICTURES = {"overlay": "cam_png_base64", "layer": "cam_layer_png_base64", "image": "image_png_base64"}
PICTURES_PARAMETER = {"name": "pictures", "in": "query", "required": False, "schema": {"type": "string"},
                      "description": "PNG pictures to add to the answer, comma-separated: overlay (the CAM blended "
                                     "on the image), layer (its colours alone, with alpha), image (the model's "
                                     "input); or all. None by default.", "example": "overlay"}
VIEW_PARAMETER = {"name": "view", "in": "query", "required": False, "schema": {"type": "string"},
                  "description": "the film's view position (PA, AP...) where the file does not state one (a PNG "
                                 "or JPEG): it picks that view's threshold; a DICOM's header wins", "example": "PA"}
MULTIPART_OVERHEAD = 64 * 1024  # the form's boundaries and part headers around the file's bytes
# what /v1/predict answers besides 200 (the OpenAPI schema lists them, so a fuzzer checks them too)
ERRORS = {400: "empty or malformed request", 401: "missing or wrong bearer token", 413: "upload or image too large",
          415: "not a DICOM, PNG, JPEG, BMP, TIFF or .npy file",
          421: "addressed to another host than this loopback server",
          422: "the file cannot be read as a chest X-ray, or a query value is not valid", 503: "server busy"}
# /v1/predict's parameter and body as OpenAPI states them (the endpoint reads the request itself)
PREDICT_OPENAPI = {"parameters": [PICTURES_PARAMETER, VIEW_PARAMETER], "requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}}}}}
# what the upload's first bytes say it is -> the suffix the reader needs
MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"\x93NUMPY", ".npy"), (b"BM", ".bmp"),
         (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def sniff_suffix(data: bytes) -> str | None:
    """The file type from its content (never from the client's file name): DICOM, PNG, JPEG, npy, BMP, TIFF."""
    if len(data) > 132 and data[128:132] == b"DICM":
        return ".dcm"
    for magic, suffix in MAGIC:
        if data.startswith(magic):
            return suffix
    return None


def png_base64(rgb_or_gray: np.ndarray) -> str:
    """(H, W), (H, W, 3) or (H, W, 4) float in [0, 1] -> base64 PNG."""
    return base64.b64encode(to_png(rgb_or_gray)).decode("ascii")


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode_upload(predictor: Predictor, data: bytes) -> LoadedImage:
    """Bytes of one uploaded file -> the model input and the view a DICOM states, by the checkpoint's contract.
    Raises UploadError (4xx)."""
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    suffix = sniff_suffix(data)
    if suffix is None:
        raise UploadError(415, "unsupported file type: send a DICOM, PNG, JPEG, BMP, TIFF or .npy file")
    with tempfile.NamedTemporaryFile(prefix="pneumocam-upload-", suffix=suffix) as file:  # deleted on every path
        file.write(data)
        file.flush()
        try:
            return predictor.load_with_view(file.name)  # the checkpoint's preprocessing, as `predict` applies it
        except ImageReadError as exc:
            status = 413 if exc.reason.startswith(TOO_LARGE) else 422
            reason = exc.reason.replace(file.name, "the upload").replace(str(Path(file.name).parent), "...")
            raise UploadError(status, f"cannot read the uploaded {suffix[1:].upper()} file: {reason}") from exc
        except MemoryError as exc:
            raise UploadError(413, f"the uploaded {suffix[1:].upper()} file needs more memory to decode than "
                                   "this server has") from exc


def requested_pictures(value: str | None) -> tuple[str, ...]:
    """?pictures=overlay,layer,image (or "all") -> the names asked for; none when absent or empty."""
    if not value:
        return ()
    names = tuple(PICTURES) if value.strip() == "all" else tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in PICTURES]
    if unknown:
        raise UploadError(422, f"unknown picture {unknown[0]!r} in ?pictures=; choose from "
                               f"{', '.join(PICTURES)} or all")
    return names


def requested_view(value: str | None) -> str:
    """?view=PA -> "PA", normalised as the manifest stores views; "" when absent. Raises UploadError (422) for a
    malformed view, before the upload is read."""
    view, malformed = normalise("view", value)
    if malformed:
        raise UploadError(422, f"?view={value!r} is not a view position such as PA or AP")
    return view


def requested_options(query: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
    """(?pictures=, ?view=), both checked before the upload is read."""
    return requested_pictures(query.get("pictures")), requested_view(query.get("view"))


def _picture(name: str, prediction: Prediction, shown: ShownMap) -> str:
    if name == "overlay":  # the overlay, blended
        return png_base64(overlay_map(prediction.image, shown))
    if name == "layer":  # its colours alone (a palette PNG with alpha), for the page's slider
        return base64.b64encode(layer_png(shown)).decode("ascii")
    return png_base64(prediction.image)  # the model's input


def answer(predictor: Predictor, prediction: Prediction, scale: str = "absolute",
           pictures: Sequence[str] = ()) -> dict:
    """One prediction as the JSON answer of /v1/predict, with the pictures named in `pictures` (PICTURES)."""
    shown = ShownMap.of(prediction, scale)
    body = {
        "probability": prediction.probability,
        "predicted": prediction.predicted,
        "threshold": prediction.threshold,
        "threshold_basis": prediction.threshold_basis,  # "view PA", or "overall (view unknown)"
        "view": prediction.view,  # from a DICOM's header, else from ?view=; "" when neither states one
        "threshold_rule": predictor.metadata.get("threshold_rule"),
        "ood": prediction.ood,  # true: does not look like a frontal chest X-ray; null: the model has no detector
        "ood_reason": prediction.ood_reason,
        "ood_distance": prediction.ood_distance,
        "model": {"fingerprint": predictor.metadata.get("data_fingerprint"),
                  "git_commit": predictor.metadata.get("git_commit")},
        # the CAM (7x7 at 224 px) in raw logit units, rows from the top: their mean plus the bias is the logit
        "cam_cells": None if prediction.cam_raw is None else np.round(prediction.cam_raw, 5).tolist(),
        "cam_scale": colour_bar_description(shown),  # what the pictures' colours mean: stops, ticks, label
    }
    body.update({PICTURES[name]: _picture(name, prediction, shown) for name in pictures})
    return body


async def answer_off_the_loop(predictor: Predictor, prediction: Prediction, scale: str,
                              pictures: Sequence[str]) -> dict:
    """answer(), in a worker thread when it draws pictures (milliseconds); numbers only (tens of microseconds) on
    the event loop, where a thread hand-off would cost more than the answer itself."""
    if pictures:
        return await run_in_threadpool(answer, predictor, prediction, scale, pictures)
    return answer(predictor, prediction, scale)


def upload_limit_bytes(config: ServeConfig) -> int:
    """--max-upload-mb in bytes: the file's own limit (the form reader's) and, with the form's framing, the
    request body's (the BodyLimit guard's)."""
    return int(config.max_upload_mb * 1024 * 1024)


def _error_schema(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {
        "type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}}}}}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _authorised(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    header = request.headers.get("authorization", "")
    return secrets.compare_digest(header.encode(), f"Bearer {token}".encode())


def model_description(predictor: Predictor) -> dict:
    """GET /v1/model: what answers, with which settings, threshold and provenance."""
    meta = predictor.metadata
    return {"api_version": API_VERSION, "config": without_machine_paths(meta.get("config")),
            "normalization": without_machine_paths(meta.get("normalization")),
            "threshold": predictor.threshold, "thresholds_by_view": predictor.thresholds_by_view,
            "threshold_rule": meta.get("threshold_rule"),
            "calibration": predictor.calibration.to_metadata(),
            "calibration_by_view": {view: c.to_metadata() for view, c in predictor.calibrations_by_view.items()},
            "detects_out_of_range": predictor.out_of_range is not None,
            "data_fingerprint": meta.get("data_fingerprint"),
            "git_commit": meta.get("git_commit"), "versions": meta.get("versions"), "backend": predictor.backend}


class UploadReader:
    """Reads uploads within the size limit and decodes them within the decode slots, counting those in progress
    (a forming batch waits for them)."""

    def __init__(self, predictor: Predictor, config: ServeConfig):
        self.predictor, self.max_mb = predictor, config.max_upload_mb
        self.limit = upload_limit_bytes(config)
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.in_progress = 0

    async def read(self, request: Request) -> bytes:
        form = await request.form(max_files=1, max_fields=4, max_part_size=self.limit + 1)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UploadError(422, "send the image as a multipart form field named 'file'")
        data = await upload.read(self.limit + 1)
        if len(data) > self.limit:
            raise UploadError(413, f"upload larger than {self.max_mb:g} MB")
        return data

    async def image(self, request: Request) -> tuple[LoadedImage, int]:
        """Read and decode one upload -> (model input, bytes)."""
        self.in_progress += 1
        try:
            data = await self.read(request)
            async with self.slots:
                return await run_in_threadpool(decode_upload, self.predictor, data), len(data)
        finally:
            self.in_progress -= 1


def _guarded_app(predictor: Predictor, config: ServeConfig, token: str | None) -> FastAPI:
    """The FastAPI app with the request guards (http_guards) and, if asked for, the interactive docs."""
    app = FastAPI(title="pneumocam", version=str(predictor.metadata.get("versions", {}).get("pneumocam", "")),
                  description="Pneumonia probability and Class Activation Map for one chest X-ray.",
                  docs_url="/docs" if config.api_docs else None, redoc_url="/redoc" if config.api_docs else None)
    app.add_middleware(BodyLimit, limit=upload_limit_bytes(config) + MULTIPART_OVERHEAD,
                       message=f"upload larger than {config.max_upload_mb:g} MB")
    if is_loopback(config.host) and token is None:
        app.add_middleware(LoopbackHostOnly)
    return app


def create_app(predictor: Predictor, config: ServeConfig = ServeConfig(), token: str | None = None) -> FastAPI:
    """The app around a loaded predictor; with `token`, the /v1 endpoints want "Authorization: Bearer TOKEN"."""
    app = _guarded_app(predictor, config, token)
    uploads = UploadReader(predictor, config)

    def run_batch(loaded: list[LoadedImage]) -> list[Prediction]:
        return predictor.predict_arrays([x.image for x in loaded], ["upload"] * len(loaded), cam=True,
                                        batch_size=len(loaded), views=[x.view for x in loaded])

    batcher = DynamicBatcher(run_batch, config.max_batch, config.max_wait_ms, lambda: uploads.in_progress)
    app.state.batcher = batcher
    waiting = {"n": 0}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model(request: Request):
        if not _authorised(request, token):
            return _error(401, "missing or wrong bearer token")
        return model_description(predictor)

    @app.post("/v1/predict", responses={status: _error_schema(text) for status, text in ERRORS.items()},
              openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request):
        if not _authorised(request, token):
            return _error(401, "missing or wrong bearer token")
        try:
            pictures, view = requested_options(request.query_params)
        except UploadError as exc:
            return _error(exc.status, exc.message)
        if waiting["n"] >= config.max_queue + config.max_concurrency:
            return _error(503, "server busy, try again shortly")
        start = time.perf_counter()
        waiting["n"] += 1
        try:
            loaded, size = await uploads.image(request)
            loaded = loaded.or_view(view)  # the DICOM header's view wins
            prediction = await batcher.submit(loaded)
            body = await answer_off_the_loop(predictor, prediction, config.cam_scale, pictures)
        except UploadError as exc:
            log.info("predict: %d (%d ms)", exc.status, 1000 * (time.perf_counter() - start))
            return _error(exc.status, exc.message)
        except ValueError as exc:  # malformed multipart bodies
            log.info("predict: 400 malformed request")
            return _error(400, f"malformed multipart request ({type(exc).__name__})")
        except MemoryError:
            log.info("predict: 413 out of memory")
            return _error(413, "the upload needs more memory than this server has")
        finally:
            waiting["n"] -= 1
        log.info("predict: 200, %d bytes, %d ms", size, 1000 * (time.perf_counter() - start))
        return JSONResponse(body)  # plain JSON types already: no need for FastAPI's encoder walk

    return app


def serve(checkpoint: str | Path, config: ServeConfig = ServeConfig()) -> None:
    import uvicorn

    token = resolve_token(config.token_env)
    if not is_loopback(config.host) and token is None:
        log.warning("serving on %s without a token: anyone who can reach this address can upload images", config.host)
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device, backend=config.backend)
    app = create_app(predictor, config, token)
    gc.freeze()  # what start-up made lives as long as the server: keep it out of every later collection
    # no access log: its lines would carry query strings
    uvicorn.run(app, host=config.host, port=config.port, log_level="info",
                access_log=False)
