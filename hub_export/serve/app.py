"""``concat-embed serve``: the HTTP app (FastAPI) with OpenAI- and TEI-compatible endpoints, and its local runner.

:func:`create_app` builds the routes around an ``embed`` coroutine; the local engine passes a
:class:`~hub_export.serve.batcher.DynamicBatcher`, the Ray engine (:mod:`hub_export.serve.ray_engine`) a
Ray Serve batched method, so both answer the same requests with the same responses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub_export.folder import compressed_dims, load_model
from hub_export.runtime.choice import Runtime, loaded_label
from hub_export.serve.batcher import DynamicBatcher
from hub_export.serve.requests import (
    Embedder,
    EmbedFn,
    OpenAIEmbeddingRequest,
    ServerError,
    TEIEmbedRequest,
    openai_response,
    tei_info,
    tei_response,
)

logger = logging.getLogger(__name__)

API_KEY_ENV = "CONCAT_EMBED_API_KEY"
OPEN_PATHS = ("/health",)
ROUTES = ("/v1/embeddings", "/embed", "/info", "/health", "/metrics")  # metric labels; any other path is "other"
PAYLOAD_LIMIT = 2_000_000  # bytes of a request body, as TEI's --payload-limit


class Metrics:
    """Prometheus metrics of one server, in their own registry (``GET /metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("concat_embed_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "concat_embed_request_seconds", "request latency", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.batch_texts = Histogram(
            "concat_embed_batch_texts", "texts per model batch", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
        )  # fmt: skip
        self.queue_texts = Gauge("concat_embed_queue_texts", "texts waiting for the model", registry=self.registry)
        self.tokens = Counter("concat_embed_tokens", "input tokens embedded", registry=self.registry)
        self.texts = Counter("concat_embed_texts", "texts embedded", registry=self.registry)

    def on_batch(self, texts: int, queued: int) -> None:
        """Record one model batch and the queue depth after it was taken."""
        self.batch_texts.observe(texts)
        self.queue_texts.set(queued)


def error_body(route: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The error JSON of each API family: OpenAI's ``{"error": {...}}`` or TEI's ``{"error", "error_type"}``."""
    if route.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": param, "code": status}}
    kinds = {401: "Unauthorized", 413: "Validation", 422: "Validation", 429: "Overloaded", 503: "Overloaded"}
    return {"error": message, "error_type": kinds.get(status, "Backend")}


def reply_error(
    route: str, status: int, message: str, param: str | None = None, retry_after: int | None = None
) -> JSONResponse:
    """An error response in the route's API family, with ``Retry-After`` when given."""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse(error_body(route, status, message, param), status_code=status, headers=headers)


def json_response(data: Any) -> Response:
    """Serialize a response body once, with orjson when installed (numpy arrays and float lists are fast)."""
    try:
        import orjson

        body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    except ImportError:
        body = json.dumps(data, default=lambda value: value.tolist()).encode()
    return Response(body, media_type="application/json")


class GuardMiddleware:
    """Pure ASGI middleware: API-key check (every HTTP route but ``/health``), the request-body limit (413 before
    the body is read past it), status and latency metrics labelled by route (unknown paths share one label)."""

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics, payload_limit: int = PAYLOAD_LIMIT) -> None:
        self.app, self.api_key, self.metrics, self.payload_limit = app, api_key, metrics, payload_limit
        self.expected = f"Bearer {api_key}".encode() if api_key else b""

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, started, status = scope["path"], time.perf_counter(), [500]
        route = path if path in ROUTES else "other"
        headers = dict(scope["headers"])
        if self.api_key and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = reply_error(path, 401, "missing or wrong API key: send Authorization: Bearer <key>")
                self.metrics.requests.labels(route, "401").inc()
                await response(scope, receive, send)
                return
        if scope["method"] == "POST":
            declared = headers.get(b"content-length", b"")
            too_long = declared.isdigit() and int(declared) > self.payload_limit
            body = None if too_long else await self._bounded_body(receive)
            if body is None:
                message = f"body: the request is larger than the limit of {self.payload_limit} bytes"
                self.metrics.requests.labels(route, "413").inc()
                await reply_error(path, 413, message, "body")(scope, receive, send)
                return
            receive = _replay(body, receive)

        async def send_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _bounded_body(self, receive: Callable) -> bytes | None:
        """The whole request body, or None as soon as it passes the limit (a chunked body has no declared length)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            size += len(message.get("body", b""))
            if size > self.payload_limit:
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that hands the app the already read body, then what the connection says next (a disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (the batcher then leaves its texts out)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone()
    return task.result()


class ClientGone(Exception):
    """The client disconnected before its vectors were ready: nothing is sent."""


def create_app(
    embedder: Embedder,
    embed: EmbedFn | None = None,
    api_key: str | None = None,
    engine: str = "local",
    lifespan_hooks: tuple[Callable, Callable] | None = None,
    payload_limit: int = PAYLOAD_LIMIT,
) -> FastAPI:
    """The server's routes around ``embed`` (default: a :class:`DynamicBatcher` over ``embedder``).

    Args:
        embedder: The loaded model, its id and the request limits.
        embed: Coroutine ``(texts, prompt name) -> vectors``; ``None`` batches locally.
        api_key: When set, every route but ``/health`` needs ``Authorization: Bearer <key>``.
        engine: Reported by ``/info``.
        lifespan_hooks: Extra ``(start, stop)`` coroutines run with the app.
        payload_limit: Largest request body in bytes (413 beyond, before it is read further).
    """
    metrics = Metrics()
    batcher = DynamicBatcher(embedder, on_batch=metrics.on_batch) if embed is None else None
    embed_fn: EmbedFn = batcher if batcher is not None else embed  # type: ignore[assignment]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loop = asyncio.get_running_loop()  # a signal handler hands the batcher over to it
        if batcher is not None:
            await batcher.start()
        if lifespan_hooks:
            await lifespan_hooks[0]()
        yield
        if lifespan_hooks:
            await lifespan_hooks[1]()
        if batcher is not None:
            await batcher.stop()

    app = FastAPI(title="concat-embed", lifespan=lifespan)
    app.state.embedder, app.state.metrics, app.state.batcher = embedder, metrics, batcher
    app.add_middleware(GuardMiddleware, api_key=api_key, metrics=metrics, payload_limit=payload_limit)

    @app.exception_handler(ServerError)
    async def server_error(request: Request, error: ServerError):
        return reply_error(request.url.path, error.status, error.message, error.param, error.retry_after)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 400:  # FastAPI's answer to a body it cannot decode (not UTF-8)
            return reply_error(request.url.path, 422, "body: not valid UTF-8 JSON", "body")
        return reply_error(request.url.path, error.status_code, str(error.detail))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone):
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):  # the server keeps answering
        logger.error("request to %s failed: %r", request.url.path, error)
        return reply_error(request.url.path, 500, f"internal error: {type(error).__name__}")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "json_invalid":
            where, message = "body", f"invalid JSON ({first.get('ctx', {}).get('error', message)})"
        return reply_error(request.url.path, 422, f"{where}: {message}", where.split(".")[0])

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request, body: OpenAIEmbeddingRequest) -> Response:
        result = await unless_disconnected(request, openai_response(embedder, body, embed_fn))
        metrics.texts.inc(len(result["data"]))
        metrics.tokens.inc(result["usage"]["total_tokens"])
        return json_response(result)

    @app.post("/embed")
    async def tei_embed(request: Request, body: TEIEmbedRequest) -> Response:
        result = await unless_disconnected(request, tei_response(embedder, body, embed_fn))
        metrics.texts.inc(len(result))
        return json_response(result)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return tei_info(embedder, engine)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def load_embedder(
    model: str,
    runtime: Runtime | None = None,
    max_batch_tokens: int = 2048,
    served_name: str | None = None,
    **limits: int,
) -> Embedder:
    """Load ``model`` once for serving (remote code trusted) on ``runtime`` (default: exact torch).

    ``served_name`` is the name ``/info`` and every response report (default: a local folder's name, or the
    Hub id): never the machine's path to the folder.
    """
    from hub_export.serve.requests import Limits

    runtime = runtime or Runtime()
    loaded = load_model(model, **runtime.load_kwargs())
    logger.info("serving %s on %s", model, loaded_label(loaded))
    limits_ = Limits(max_batch_tokens=max_batch_tokens, **limits)
    name = served_name or (Path(model).resolve().name if Path(model).is_dir() else model)
    return Embedder(loaded, model_id=name, limits=limits_, recorded_dims=compressed_dims(model))


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (clients may connect as soon as this returns).

    Raises:
        OSError: Naming ``host:port`` when the port is taken or the host cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; stop what listens there or choose another port"
        ) from None
    return sock


def run_local(app: FastAPI, sock: socket.socket, grace_period: float = 30.0) -> None:
    """Serve ``app`` with uvicorn on an already listening socket until SIGINT / SIGTERM.

    On the signal the batcher answers waiting and new requests 503 (JSON, with Retry-After) and stops the
    batch in progress after its current token-budget batch; uvicorn stops accepting connections and waits
    up to ``grace_period`` seconds for the requests in flight to be answered.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            batcher, loop = app.state.batcher, getattr(app.state, "loop", None)
            if batcher is not None and loop is not None and not self.should_exit:
                loop.call_soon_threadsafe(batcher.begin_shutdown)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=grace_period)
    DrainingServer(config).run(sockets=[sock])
