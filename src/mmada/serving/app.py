"""The OpenAI-compatible HTTP server: `create_app(pipe, ServeConfig)` returns a FastAPI app.

Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`,
`POST /v1/images/generations`, `POST /v1/images/edits`, `GET /health`, `GET /metrics`, and the web page
at `/` (plain files in `static/`). Requests are validated (`schemas`, `prepare`), queued as jobs for the
one model worker (`scheduler`), and answered as JSON or as Server-Sent Events (`stream: true`). Every
error is OpenAI's error JSON; nothing a request does stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..pipelines import MMaDAPipeline
from .config import ServeConfig
from .errors import ApiError
from .metrics import Metrics
from .prepare import check_model, prepare_chat, prepare_completion, prepare_image
from .scheduler import Event, Job, QueueFull, Scheduler
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ImageEditForm,
    ImageGenerationRequest,
    ModelCard,
    ModelList,
)
from .streams import chat_events, chat_response, completion_events, completion_response, image_events, image_response
from .work import run_completion, run_edit, run_images, run_text

STATIC = Path(__file__).parent / "static"
PUBLIC = ("/", "/static/", "/favicon.ico")
"""Paths served without the API key: the page's own files (a browser cannot send a bearer header when it
loads a page; the page holds no data and sends the key with every API call)."""
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/images/generations", "/v1/images/edits", "/v1/models",
          "/health", "/metrics")
UNION_TYPES = {"str", "int", "float", "bool", "list", "dict", "none"}
EDIT_FIELDS = 32  # most multipart fields an edit request may have


class Gate:
    """ASGI middleware in front of every route: the API key, the body limit, and the request metrics.

    The body is read up to the limit (413 by its Content-Length when declared, by counting when chunked)
    before any route parses it, then replayed to the app. Latency is taken when the app returns, so a
    stream counts until its last event. (A pure ASGI middleware, not Starlette's BaseHTTPMiddleware, so that
    routes still see the client's disconnect.)
    """

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app, self.server, self.limit = app, server, server.config.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, path, status = time.perf_counter(), scope["path"], 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            headers = dict(scope["headers"])
            refusal = _check_auth(path, headers.get(b"authorization", b""), self.server.config.api_key)
            if refusal is None and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                refusal, receive = await self._read_body(headers, receive)
            if refusal is not None:
                await _send_error(send_counted, refusal)
                return
            await self.app(scope, receive, send_counted)
        finally:
            route = path if path in ROUTES else "other"
            self.server.metrics.requests.labels(route, str(status)).inc()
            self.server.metrics.latency.labels(route).observe(time.perf_counter() - start)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> tuple[ApiError | None, Receive]:
        too_large = ApiError(413, f"the request body is larger than {self.limit} bytes", code="body_too_large")
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return too_large, receive
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return ApiError(400, "the client left before sending its body"), receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return too_large, receive
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the disconnect, when it comes

        return None, replay


async def _send_error(send: Send, err: ApiError) -> None:
    payload = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _validation_error(err: RequestValidationError | ValidationError) -> ApiError:
    """Pydantic's first complaint as a 400 naming the field (`messages[0].content`)."""
    errors = err.errors()
    first = max(errors, key=lambda e: len(e["loc"]))  # of a union's branches, the one that got furthest
    if first["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    loc: list[str | int] = []
    for part in first["loc"][1:] if first["loc"][:1] == ("body",) else first["loc"]:
        # union branches add their type ("str", "list[...]") and tagged ones the tag, equal to the next field
        named = isinstance(part, int) or (re.fullmatch(r"[a-z_]\w*", part) and part not in UNION_TYPES)
        if named and (not loc or loc[-1] != part):
            loc.append(part)
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    if param is None:
        return ApiError(400, f"the body must be a JSON object: {first['msg']}", code="invalid_body")
    return ApiError(400, f"`{param}`: {first['msg']}", param=param, code="invalid_value")


class Server:
    """The app's state: the pipeline, the limits, the worker and the metrics."""

    def __init__(self, pipe: MMaDAPipeline, config: ServeConfig) -> None:
        self.pipe, self.config, self.metrics = pipe, config, Metrics()
        runners = {"chat": lambda jobs: run_text(pipe, self.metrics, jobs),
                   "vision": lambda jobs: run_text(pipe, self.metrics, jobs),
                   "completion": lambda jobs: run_completion(pipe, self.metrics, jobs),
                   "t2i": lambda jobs: run_images(pipe, self.metrics, jobs),
                   "edit": lambda jobs: run_edit(pipe, self.metrics, jobs)}
        self.scheduler = Scheduler(runners, queue_size=config.queue_size, max_batch=config.max_batch,
                                   batch_window_s=config.batch_window_s, metrics=self.metrics)
        self.created = int(time.time())

    def submit(self, kind: str, key: Any, rows: int, inputs: Any) -> tuple[Job, asyncio.Queue[Event]]:
        """Queue a job; its events arrive on the returned queue (429 when the queue is full)."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue[Event]()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is shutting down
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(kind, key, rows, inputs, emit, time.monotonic() + self.config.request_timeout_s)
        try:
            self.scheduler.submit(job)
        except QueueFull:
            self.metrics.rejected.inc()
            retry = str(self.config.retry_after_s)
            raise ApiError(429, f"the server is busy ({self.scheduler.depth} requests queued); retry in {retry} s",
                           code="queue_full", headers={"Retry-After": retry}) from None
        return job, events

    async def next_event(self, job: Job, events: asyncio.Queue[Event], request: Request | None = None) -> Event:
        """The job's next event; a client that left (non-streaming: polled) cancels the job."""
        while True:
            remaining = job.deadline - time.monotonic() + 1.0
            if remaining <= 0:
                job.cancel()
                return Event("error", ApiError(504, "the request took longer than the server's time limit",
                                               code="timeout"))
            try:
                return await asyncio.wait_for(events.get(), timeout=min(remaining, 0.25))
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.cancelled(job)
                    raise asyncio.CancelledError from None

    async def stream_events(self, job: Job, events: asyncio.Queue[Event]) -> AsyncIterator[Event]:
        """The job's events up to and including the final one."""
        while True:
            event = await self.next_event(job, events)
            yield event
            if event.type != "step":
                return

    async def result(self, job: Job, events: asyncio.Queue[Event], request: Request) -> Any:
        """Wait for the job's final result (skipping step events), raising its error."""
        while True:
            event = await self.next_event(job, events, request)
            if event.type == "error":
                raise event.data
            if event.type == "done":
                return event.data

    def cancelled(self, job: Job) -> None:
        if not job.cancelled.is_set():
            job.cancel()
            self.metrics.cancelled.inc()


def _check_auth(path: str, given: bytes, key: str | None) -> ApiError | None:
    """None when the request may pass: no key is set, the path is the page's own, or the bearer key matches."""
    if key is None or path == "/" or path.startswith(PUBLIC[1:]):
        return None
    scheme, _, token = given.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
        return ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`", code="invalid_api_key")
    return None


def create_app(pipe: MMaDAPipeline, config: ServeConfig | None = None) -> FastAPI:
    """The server around `pipe`; the model worker starts and stops with the app's lifespan."""
    server = Server(pipe, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.scheduler.start()
        yield
        server.scheduler.stop()

    app = FastAPI(title="mmada", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    _add_handlers(app, server)
    _add_api_routes(app, server)
    _add_image_routes(app, server)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Gate, server=server)
    return app


def _add_handlers(app: FastAPI, server: Server) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(err))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 404:
            what = f"unknown route: {request.method} {request.url.path[:200]}"
        elif err.status_code == 405:
            what = f"method {request.method} is not allowed on {request.url.path[:200]}"
        elif err.status_code == 400:  # Starlette could not read the body (bad encoding, too deep, ...)
            what = f"the body is not valid JSON: {err.detail}"
        else:
            what = str(err.detail)
        return error_response(ApiError(err.status_code, what, code="not_found" if err.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        return error_response(ApiError(500, f"internal error: {type(err).__name__}", code="internal_error"))


def _add_api_routes(app: FastAPI, server: Server) -> None:
    pipe, config = server.pipe, server.config

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = server.scheduler.alive
        body = {"status": "ok" if alive else "worker stopped", "model": config.model_name,
                "queue_depth": server.scheduler.depth, "busy": server.scheduler.busy}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=config.model_name, created=server.created)]).model_dump()

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict[str, Any]:
        check_model(model, config)
        return ModelCard(id=config.model_name, created=server.created).model_dump()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        kind, key, work, prompt_tokens = await run_in_threadpool(prepare_chat, pipe, config, body)
        job, events = server.submit(kind, key, work.n, work)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": config.model_name}
        if body.stream:
            return _sse(server, job, events, partial(chat_events, job=job, meta=meta, work=work,
                                                     prompt_tokens=prompt_tokens))
        return chat_response(await server.result(job, events, request), meta, work, prompt_tokens)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        work, prompt_tokens = await run_in_threadpool(prepare_completion, pipe, config, body)
        job, events = server.submit("completion", None, work.n, work)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": config.model_name}
        if body.stream:
            return _sse(server, job, events, partial(completion_events, job=job, meta=meta, work=work,
                                                     prompt_tokens=prompt_tokens))
        return completion_response(await server.result(job, events, request), meta, prompt_tokens)


def _add_image_routes(app: FastAPI, server: Server) -> None:
    pipe, config = server.pipe, server.config

    @app.post("/v1/images/generations", response_model=None)
    async def generations(body: ImageGenerationRequest, request: Request) -> dict[str, Any] | StreamingResponse:
        key, work = prepare_image(pipe, config, body)
        job, events = server.submit("t2i", key, work.n, work)
        if body.stream:
            return _sse(server, job, events, partial(image_events, job=job, work=work, pipe=pipe,
                                                     prefix="image_generation", image_tokens=0))
        return image_response(await server.result(job, events, request), work, pipe, 0)

    @app.post("/v1/images/edits", response_model=None)
    async def edits(request: Request) -> dict[str, Any] | StreamingResponse:
        form = await request.form(max_files=2, max_fields=EDIT_FIELDS, max_part_size=config.max_body_bytes)
        files: dict[str, bytes] = {}
        fields: dict[str, str] = {}
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields[name] = value
            elif name in ("image", "image[]", "mask"):
                files[name.removesuffix("[]")] = await value.read()
            else:
                raise ApiError(400, f"`{name[:64]}`: unexpected file field (send `image` and `mask`)", param=name[:64])
        if "image" not in files:
            raise ApiError(400, "`image`: a multipart file field `image` is required", param="image")
        try:
            body = ImageEditForm.model_validate(fields)
        except ValidationError as err:
            raise _validation_error(err) from None
        key, work = await run_in_threadpool(prepare_image, pipe, config, body, files["image"], files.get("mask"))
        job, events = server.submit("edit", key, 1, work)
        tokens = pipe.num_image_tokens
        if body.stream:
            return _sse(server, job, events, partial(image_events, job=job, work=work, pipe=pipe,
                                                     prefix="image_edit", image_tokens=tokens))
        return image_response(await server.result(job, events, request), work, pipe, tokens)


def _sse(server: Server, job: Job, events: asyncio.Queue[Event],
         render: Callable[[AsyncIterator[Event]], AsyncIterator[str]]) -> StreamingResponse:
    """The job's events rendered as Server-Sent Events; a client that disconnects cancels the job (Starlette
    closes the generator)."""

    async def body() -> AsyncIterator[str]:
        try:
            async for text in render(server.stream_events(job, events)):
                yield text
        finally:
            if job.finished:
                job.cancel()  # nothing left to do; a no-op for the worker
            else:
                server.cancelled(job)

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
