"""``concat-embed serve --engine ray``: the same app as a Ray Serve deployment (replicas, Ray's batching).

Each replica loads the model once and builds the app of :func:`hub_export.serve.app.create_app`
with a Ray Serve ``@serve.batch`` method as its ``embed``, so requests and responses are the
local engine's; batches of concurrent requests go through :meth:`Embedder.embed_many`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from hub_export.runtime.choice import Runtime

logger = logging.getLogger(__name__)


def ray_application(
    model: str,
    runtime: Runtime | None,
    limits: dict[str, int],
    api_key: str | None,
    replicas: int = 1,
    max_replicas: int | None = None,
    max_batch_size: int = 64,
    payload_limit: int | None = None,
) -> Any:
    """A bound Ray Serve application serving ``model`` on ``replicas`` (autoscaled up to ``max_replicas``)."""
    from ray import serve

    from hub_export.serve.app import create_app, load_embedder

    @serve.ingress()
    class ConcatEmbedDeployment:
        def __init__(self) -> None:
            self.embedder = load_embedder(model, runtime, **limits)

        def __serve_build_asgi_app__(self):  # noqa: N807 - Ray Serve's hook
            limit = {"payload_limit": payload_limit} if payload_limit else {}
            return create_app(self.embedder, embed=self.embed, api_key=api_key, engine="ray", **limit)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=0.002)
        async def _embed_batch(self, requests: list[tuple[Sequence[str], str | None]]) -> list[np.ndarray]:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self.embedder.embed_many, requests)

        async def embed(self, texts: Sequence[str], prompt_name: str | None) -> np.ndarray:
            return await self._embed_batch((list(texts), prompt_name))

    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": 1},
        "max_ongoing_requests": max_batch_size * 2,
        "max_queued_requests": limits.get("max_queue_texts", 8192),
    }
    if max_replicas:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas}
    else:
        options["num_replicas"] = replicas
    return serve.deployment(ConcatEmbedDeployment, name="concat-embed", **options).bind()


def run_ray(application: Any, host: str, port: int, address: str | None = None, ready: Any = None) -> None:
    """Start Ray (local, or join ``address``), serve ``application`` on ``host:port`` and wait until interrupted.

    ``ready`` (a callable) is called once the application answers requests.
    """
    import threading

    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application, name="concat-embed", route_prefix="/", blocking=False)
    if ready is not None:
        ready()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        serve.shutdown()
