"""arserve as a Ray Serve application: the same FastAPI app, one copy per replica, behind Ray's HTTP proxy.

    serve run deploy/ray/serve.yaml            # the config file: replicas, autoscaling, settings
    serve run app.ray_serve:app                # the same with the defaults below

Each replica builds its own app with `create_app()` (settings from ARSERVE_* in the replica's environment,
passed through `runtime_env.env_vars`) and loads every model in its lifespan, as `uvicorn app.main:app` does.
Requests are self-contained (a stream's state lives as long as its request), so replicas share nothing.
Ray's proxy streams SSE through unchanged and cancels the request on the replica when the client goes away,
which stops the generation as it does under plain uvicorn. Needs the `ray` extra; nothing else imports this.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.main import create_app

REPLICA_HEADER = b"x-arserve-replica"


class ReplicaHeader:
    """Names the replica that answered (X-Arserve-Replica), so load spreading and faults can be seen."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tag(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER, self.replica)]
            await send(message)

        await self.app(scope, receive, tag)


def build_app() -> FastAPI:
    """The builder Serve calls on each replica: a fresh app, tagged with the replica's id and pid."""
    app = create_app()
    replica = f"{serve.get_replica_context().replica_id.unique_id}/{os.getpid()}"
    app.add_middleware(ReplicaHeader, replica=replica)
    return app


@serve.deployment(
    name="arserve",
    num_replicas=1,
    max_ongoing_requests=40,  # above ARSERVE_MAX_CONCURRENT_STREAMS (32): the app answers 429 itself first
    graceful_shutdown_timeout_s=20,  # above ARSERVE_DRAIN_S: running streams drain before the replica stops
    health_check_period_s=5,
    ray_actor_options={"num_cpus": 1},
)
@serve.ingress(build_app)
class Arserve:
    async def check_health(self) -> None:
        """Healthy once this replica's models are loaded; raises (so Serve replaces it) if loading failed.

        The lifespan returns before the models are in, so without this Serve would route requests to a
        replica that still answers 503 "not_ready".
        """
        state = self.app.state  # `app`: the app build_app made for this replica (Serve's ingress wrapper)
        while not state.registry.loaded:
            await asyncio.sleep(0.1)
        if not state.registry.ready:
            raise RuntimeError(f"no model could be loaded from {state.settings.model_dir}")


app = Arserve.bind()
