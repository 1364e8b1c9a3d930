"""``concat-embed serve``: the HTTP app (FastAPI) with OpenAI- and TEI-compatible endpoints, and its local runner.

:func:`create_app` builds the routes around an ``embed`` coroutine; the local engine passes a
:class:`~hub_export.serve.batcher.DynamicBatcher`, the Ray engine (:mod:`hub_export.serve.ray_engine`) a
Ray Serve batched method, so both answer the same requests with the same responses.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
    """Pure ASGI middleware: API-key check (every HTTP route but ``/health``), status and latency metrics."""

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics) -> None:
        self.app, self.api_key, self.metrics = app, api_key, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else b""

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, started, status = scope["path"], time.perf_counter(), [500]
        if self.api_key and route not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = reply_error(route, 401, "missing or wrong API key: send Authorization: Bearer <key>")
                self.metrics.requests.labels(route, "401").inc()
                await response(scope, receive, send)
                return

        async def send_recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def create_app(
    embedder: Embedder,
    embed: EmbedFn | None = None,
    api_key: str | None = None,
    engine: str = "local",
    lifespan_hooks: tuple[Callable, Callable] | None = None,
) -> FastAPI:
    """The server's routes around ``embed`` (default: a :class:`DynamicBatcher` over ``embedder``).

    Args:
        embedder: The loaded model, its id and the request limits.
        embed: Coroutine ``(texts, prompt name) -> vectors``; ``None`` batches locally.
        api_key: When set, every route but ``/health`` needs ``Authorization: Bearer <key>``.
        engine: Reported by ``/info``.
        lifespan_hooks: Extra ``(start, stop)`` coroutines run with the app.
    """
    metrics = Metrics()
    batcher = DynamicBatcher(embedder, on_batch=metrics.on_batch) if embed is None else None
    embed_fn: EmbedFn = batcher if batcher is not None else embed  # type: ignore[assignment]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
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
    app.add_middleware(GuardMiddleware, api_key=api_key, metrics=metrics)

    @app.exception_handler(ServerError)
    async def server_error(request: Request, error: ServerError):
        return reply_error(request.url.path, error.status, error.message, error.param, error.retry_after)

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
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> Response:
        result = await openai_response(embedder, body, embed_fn)
        metrics.texts.inc(len(result["data"]))
        metrics.tokens.inc(result["usage"]["total_tokens"])
        return json_response(result)

    @app.post("/embed")
    async def tei_embed(body: TEIEmbedRequest) -> Response:
        result = await tei_response(embedder, body, embed_fn)
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


def load_embedder(model: str, runtime: Runtime | None = None, max_batch_tokens: int = 2048, **limits: int) -> Embedder:
    """Load ``model`` once for serving (remote code trusted) on ``runtime`` (default: exact torch)."""
    from hub_export.serve.requests import Limits

    runtime = runtime or Runtime()
    loaded = load_model(model, **runtime.load_kwargs())
    logger.info("serving %s on %s", model, loaded_label(loaded))
    limits_ = Limits(max_batch_tokens=max_batch_tokens, **limits)
    return Embedder(loaded, model_id=model, limits=limits_, recorded_dims=compressed_dims(model))


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


def run_local(app: FastAPI, sock: socket.socket) -> None:
    """Serve ``app`` with uvicorn on an already listening socket until interrupted."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
