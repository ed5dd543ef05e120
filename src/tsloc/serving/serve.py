"""`tsloc serve`: the model behind an HTTP API (FastAPI on uvicorn), with a page to try it.

    POST /v1/predict   one image (multipart field `file`, or a raw image/* body) -> predict's record
    POST /v1/detect    one street frame -> detect's record (when a detector is served)
    GET  /v1/model     what is served (tsloc.describe.summary); GET /healthz; GET /docs (OpenAPI, offline)
    GET  /             the page: choose or drop an image, see its box, name and top-k

Requests that arrive together run as one batch (`Batcher`: the first waits at most `max_wait_ms`
for others, up to `max_batch`), as Triton's and TorchServe's dynamic batching do; images are decoded
in worker threads (at most `DECODERS` at once, so memory stays bounded), the model runs in one
thread of its own, and the event loop only moves bytes. Bad input is a 4xx with one line of JSON
(`{"error": ...}`) and the server goes on; nothing a request names is read from disk.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline  # the OpenAPI pages (/docs, /redoc) with their scripts served here, no CDN

from ..describe import package_version
from ..errors import DataError

log = logging.getLogger("tsloc.serving.serve")
PAGE = Path(__file__).parent / "page" / "index.html"
DECODERS = 4          # images decoded at once: a 20 MB upload can decode to hundreds of MB
RAW_BODY = "the request body"  # how messages name an image sent as the body (a form's file goes by its name)
CONFIG_ENV = "TSLOC_SERVE_CONFIG"  # how `--workers N` hands the options to each worker process


# The image endpoints read the body themselves (a form or a raw image, size-capped as it streams):
# their OpenAPI description says what they take, so /docs offers a file picker.
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
ERRORS = {code: {"description": text, "content": {"application/json": {"example": {"error": "one line"}}}}
          for code, text in ((400, "not an image, truncated, too many pixels, empty, a form without 'file', or a "
                                   "query parameter unknown or out of range"),
                             (413, "a body over --max-bytes"))}
ANSWER_BOXES = "left, top, right, bottom in pixels of the upright image sent"  # what every answer's box is
QUERY = {"top_k": int, "min_probability": float}  # what a request may set for itself (?top_k=3&min_probability=0.5)


@dataclass
class ServeConfig:
    model: str = "belgiumtsc"
    detector: str | None = None
    device: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_bytes: int = 20 * 1024 * 1024
    top_k: int = 5
    min_probability: float = 0.0
    min_score: float | str = "auto"                # a detection's detector score, as detect.min_score (auto: the
    detect_min_probability: float | str = "auto"   # detector's point chosen on validation); its naming probability


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Batcher:
    """Dynamic batching: `await batcher(item)` queues one item; a loop takes the first waiting item,
    waits up to `max_wait` seconds (or until `max_batch` are waiting) for more, and runs `run(items)`
    (one result per item) in the model's thread. Under load the queue fills while a batch runs, so
    batches grow with the load and a lone request waits `max_wait` at most."""

    def __init__(self, run, max_batch: int = 32, max_wait: float = 0.005):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tsloc-model")
        self.sizes: Counter = Counter()  # batch size -> how many batches ran with it
        self.queue: asyncio.Queue | None = None
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue, self.arrived = asyncio.Queue(), asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.pool.shutdown(wait=True)

    async def __call__(self, item):
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        self.arrived.set()
        return await future

    async def call(self, fn, *args):
        """`fn(*args)` in the model's thread (the detector: whole frames are not batched)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _gather(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return [(item, f) for item, f in batch if not f.done()]  # a client that left: its future is cancelled

    async def _loop(self) -> None:
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                results = await self.call(self.run, [item for item, _ in batch])
            except Exception as exc:  # the model failed: every request of the batch says so
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.sizes[len(batch)] += 1
            for (_, f), result in zip(batch, results):
                if not f.done():
                    f.set_result(result)


async def _chunks(request):
    """The body's chunks as they arrive, read once: `request.state.body_done` says whether its end came."""
    while not getattr(request.state, "body_done", False):
        message = await request.receive()
        if message["type"] != "http.request":
            raise BadRequest(400, "the client went away before the body ended")
        request.state.body_done = not message.get("more_body", False)
        yield message.get("body", b"")


async def _capped(request, limit: int):
    """The body's chunks, stopping with 413 as soon as more than `limit` bytes came (a chunked body
    has no Content-Length to refuse it by)."""
    seen = 0
    async for chunk in _chunks(request):
        seen += len(chunk)
        if seen > limit:
            raise BadRequest(413, f"body over {limit} bytes (the server's --max-bytes)")
        if chunk:
            yield chunk


DRAIN_BYTES = 256 * 1024 * 1024  # what an oversize body is read (and dropped) up to before its 413


async def drain(request, limit: int = DRAIN_BYTES) -> None:
    """Read and discard the rest of a refused body (up to `limit`), as nginx's lingering close does:
    a client that is still sending when the answer comes (Python's urllib) then reads the 413 instead
    of a broken pipe. Past `limit` the connection is closed all the same."""
    seen = 0
    try:
        async for chunk in _chunks(request):
            seen += len(chunk)
            if seen > limit:
                return
    except BadRequest:  # the client went away: nobody to answer
        return


def query_options(request, top_k: int, min_probability: float) -> tuple[int, float]:
    """A request's own `top_k` and `min_probability` (query parameters) over the server's; an unknown
    parameter or a value out of range is a 400, not silently ignored."""
    options = {"top_k": top_k, "min_probability": min_probability}
    for key, value in request.query_params.items():
        if key not in QUERY:
            raise BadRequest(400, f"unknown query parameter {key!r} (known: {', '.join(QUERY)})")
        try:
            options[key] = QUERY[key](value)
        except ValueError:
            raise BadRequest(400, f"query parameter {key}={value!r}: not a number") from None
    if options["top_k"] < 1 or not 0.0 <= options["min_probability"] <= 1.0:
        raise BadRequest(400, f"query parameters: top_k must be at least 1 and min_probability 0 to 1, got "
                              f"top_k={options['top_k']}, min_probability={options['min_probability']}")
    return options["top_k"], options["min_probability"]


async def read_image(request, max_bytes: int) -> tuple[bytes, str]:
    """The image bytes of a request, and a name for messages: a multipart field `file` (its file
    name) or the body itself (whatever its content type: the image is recognised by its bytes)."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise BadRequest(413, f"body of {length} bytes is over {max_bytes} (the server's --max-bytes)")
    ctype = request.headers.get("content-type", "")
    mime = ctype.split(";")[0].strip().lower()
    if mime == "multipart/form-data":
        parser = MultiPartParser(request.headers, _capped(request, max_bytes), max_files=1, max_fields=8)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise BadRequest(400, f"malformed multipart form ({exc})") from exc
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadRequest(400, "the form has no file field named 'file'")
            data, name = await upload.read(), upload.filename or "file"
        finally:
            await form.close()
    else:  # any other body is the image itself, recognised by its bytes whatever its content type says
        data, name = b"".join([chunk async for chunk in _capped(request, max_bytes)]), RAW_BODY
    if not data:
        raise BadRequest(400, f"{name}: empty, no image in it")
    return data, name


class OneLinePerRequest:
    """A plain ASGI middleware (Starlette's `@app.middleware("http")` costs a task and a stream per
    request): one log line per request, with its status and time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-",)
            log.info("%s %s %s %d %.1f ms", client[0], scope["method"], scope["path"], status[0],
                     1000 * (time.perf_counter() - start))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(config: ServeConfig):
    """The FastAPI application serving `config.model` (and `config.detector`)."""
    from contextlib import asynccontextmanager

    from anyio import CapacityLimiter, to_thread
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from ..data.images import load_image
    from .api import Model
    from .detect import record as frame_record
    from .predict import prepare

    model = Model(config.model, detector=config.detector, device=config.device, top_k=config.top_k,
                  min_probability=config.min_probability)
    size = model.meta["image_size"]
    point = None
    if model.detector is not None:
        from .find import operating_point
        point = operating_point(model.detector, model.detector_file, config.min_score, config.detect_min_probability)

    def run(entries):  # (item, top_k, min_probability) each: the options are the request's own
        items = [e[0] for e in entries]
        return model.predict_pixels(np.stack([it.pixels for it in items]), [it.size for it in items],
                                    top_k=[e[1] for e in entries], min_probability=[e[2] for e in entries])

    batcher = Batcher(run, config.max_batch, config.max_wait_ms / 1000)
    decoders = CapacityLimiter(DECODERS)

    @asynccontextmanager
    async def lifespan(app):
        log.info("serving %s: %d classes, %s%s", model.file, len(model.meta["class_names"]), model.backend.name,
                 f"; detector {model.detector.name}" if model.detector is not None else "")
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPIOffline(title="tsloc", version=package_version(), lifespan=lifespan,
                         description="Traffic-sign classification and localisation (crops), and detection in "
                                     "street frames, on ONNX Runtime. Errors answer {\"error\": \"one line\"}.")
    app.state.batcher, app.state.model, app.state.config = batcher, model, config

    app.add_middleware(OneLinePerRequest)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # 404, 405 and the like: the same one line as every other error
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return _error(422, problems or "invalid request")

    async def decode(data: bytes, name: str, fn):
        try:
            return await to_thread.run_sync(fn, data, name, limiter=decoders)
        except DataError as exc:
            raise BadRequest(400, str(exc)) from exc

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/model")
    async def describe():
        """What is served: the crop model's classes, input, recipe, data and test figures; the detector."""
        detector = None
        if model.detector is not None:
            meta = model.detector.meta
            detector = {k: meta.get(k) for k in ("strides", "score_thresh", "topk", "nms_thresh", "max_detections")}
            detector |= {"backend": model.detector.name, "operating_point": point}
        return {"model": model.info | {"file": model.file.name, "backend": model.backend.name,
                                       "box_format": ANSWER_BOXES},
                "detector": detector,
                "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms,
                             "batches_run": dict(sorted(batcher.sizes.items()))},
                "min_probability": config.min_probability, "max_bytes": config.max_bytes}

    @app.post("/v1/predict", openapi_extra=IMAGE_BODY, responses=ERRORS)
    async def predict(request: Request):
        """One image holding one sign: its class, probability, top-k and box in pixels of the upright image."""
        try:
            top_k, floor = query_options(request, config.top_k, config.min_probability)
            data, name = await read_image(request, config.max_bytes)
            item = await decode(data, name, lambda d, n: prepare(d, size, label=n))
        except BadRequest as exc:
            if exc.status == 413:
                await drain(request)
            return _error(exc.status, str(exc))
        rec = await batcher((item, top_k, floor))
        return JSONResponse(rec | {"path": None if name == RAW_BODY else name})  # no re-validation of a plain dict

    @app.post("/v1/detect", openapi_extra=IMAGE_BODY, responses=ERRORS | {404: {"description": "no detector served"}})
    async def detect(request: Request):
        """One street frame: every sign found, named and boxed (tsloc detect's record)."""
        if model.finder is None:
            return _error(404, "no detector served: start the server with --detector FILE")
        try:
            data, name = await read_image(request, config.max_bytes)
            frame = await decode(data, name, lambda d, n: np.array(load_image(d, n)))
        except BadRequest as exc:
            if exc.status == 413:
                await drain(request)
            return _error(exc.status, str(exc))
        found = await batcher.call(model.finder, frame, point["min_score"])
        rec = frame_record(None, frame, found, model.meta["class_names"], point["min_probability"])
        return rec | {"path": None if name == RAW_BODY else name}

    return app


def app_from_env():
    """The application of one `--workers` process: its options come in CONFIG_ENV (uvicorn starts
    each worker by import string, so they cannot be passed as objects)."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the server until Ctrl-C: one line per request on stderr."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    app = create_app(config)  # a missing or foreign model file is one message here, not in each worker
    if workers > 1:
        del app
        os.environ[CONFIG_ENV] = json.dumps(asdict(config))
        uvicorn.run("tsloc.serving.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                    access_log=False)
    else:
        uvicorn.run(app, host=host, port=port, access_log=False)
