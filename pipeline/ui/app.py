"""The dashboard's ASGI app (Starlette): HTML pages, a JSON API, and live events over SSE.

Every read of the history goes through the read-only engine; live points come from the Redis
stream (the run's shard), never from polling SQL: one ``XREAD`` loop per viewer, no SQL per event.
With a token, every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (or
``?token=``, which ``EventSource`` can send).

Example:
    >>> app = create_app(get_settings(), token="s3cret")   # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8765)      # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline import events as ev
from pipeline.bus import run_stream_name
from pipeline.cli.output import jsonable
from pipeline.config import Settings, is_cluster_url
from pipeline.db import dashboard
from pipeline.db.session import make_engine
from pipeline.errors import ConfigurationError, FitstreamError, RunNotFoundError
from pipeline.ui import pages

STATIC = Path(__file__).parent / "static"
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
#: How far before a page's SQL snapshot its live events start: covers the recorder's lag; the page
#: keeps one point per epoch, so events it already has replace themselves.
REPLAY_MARGIN_S = 60.0
KEEPALIVE_MS = 15_000


class TokenGate:
    """ASGI middleware: 401 for every route but ``/healthz`` without the token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.token
            and scope["type"] == "http"
            and scope["path"] != "/healthz"
            and not self._allowed(Request(scope))
        ):
            response = JSONResponse(
                {"error": "a token is required: Authorization: Bearer <token>, or ?token=<token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = (
            header[7:].strip()
            if header.lower().startswith("bearer ")
            else request.query_params.get("token", "")
        )
        return bool(given) and hmac.compare_digest(given.encode(), (self.token or "").encode())


def _redis(settings: Settings) -> Any:
    if is_cluster_url(settings.redis_url):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(settings.redis_url.replace("+cluster://", "://", 1))
    import redis.asyncio

    return redis.asyncio.from_url(settings.redis_url, socket_connect_timeout=2)


def create_app(settings: Settings, *, token: str | None = None) -> ASGIApp:
    """The dashboard for ``settings``' history and stream (read-only)."""
    engine = make_engine(settings.database_url, read_only=True)

    async def in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(function, engine, *args, **kwargs)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def api_runs(request: Request) -> Response:
        q = request.query_params
        rows = await in_thread(
            dashboard.runs_payload,
            status=q.get("status") or None,
            name=q.get("name") or None,
            sweep=q.get("sweep") or None,
            limit=_int(q.get("limit"), 200),
        )
        return JSONResponse(jsonable(rows))

    async def api_metrics(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        level = request.query_params.get("level", "epoch")
        if level not in ("epoch", "batch"):
            raise ConfigurationError("level is epoch or batch")
        start = f"{max(0, int((time.time() - REPLAY_MARGIN_S) * 1000))}-0"
        limit = max(
            4,
            min(_int(request.query_params.get("limit"), dashboard.MAX_POINTS, cap=100_000_000), 100_000_000),
        )
        payload = await in_thread(dashboard.metrics_payload, run_id, level=level, limit=limit)
        return JSONResponse(jsonable(payload), headers={"X-Fitstream-Stream-Id": start})

    async def api_run(request: Request) -> Response:
        return JSONResponse(jsonable(await in_thread(dashboard.run_payload, request.path_params["run_id"])))

    async def api_compare(request: Request) -> Response:
        refs = [r for r in request.query_params.get("runs", "").split(",") if r.strip()]
        return JSONResponse(jsonable(await in_thread(dashboard.compare_payload, refs)))

    async def api_models(_request: Request) -> Response:
        return JSONResponse(jsonable(await in_thread(dashboard.models_payload)))

    async def api_events(request: Request) -> Response:
        run_id = await in_thread(_full_run_id, request.path_params["run_id"])
        start = request.headers.get("last-event-id") or request.query_params.get("after") or "0-0"
        if not _STREAM_ID.match(start):
            raise ConfigurationError(f"not a stream id: {start[:40]!r} (ids look like 1795664000000-0)")
        return StreamingResponse(
            _follow(request, run_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _follow(request: Request, run_id: str, start: str) -> AsyncIterator[str]:
        client = request.app.state.redis
        key, last = run_stream_name(settings, run_id), start
        yield "retry: 1000\n\n"
        while not await request.is_disconnected():
            reply = await client.xread({key: last}, count=500, block=KEEPALIVE_MS)
            if not reply:
                yield ": keep-alive\n\n"
                continue
            for _name, entries in reply:
                for message_id, fields in entries:
                    last = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
                    try:
                        event = ev.decode(fields)
                    except FitstreamError:
                        continue
                    if event.run_id == run_id:
                        yield f"id: {last}\nevent: {event.type}\ndata: {json.dumps(jsonable(event.model_dump()))}\n\n"

    async def page(request: Request) -> Response:
        name = request.scope["route"].name
        return HTMLResponse(pages.render(name, request.path_params, dict(request.query_params)))

    async def on_error(_request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, RunNotFoundError) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.redis = _redis(settings)
        try:
            yield
        finally:
            await app.state.redis.aclose()
            engine.dispose()

    app = Starlette(
        routes=[
            Route("/", page, name="runs"),
            Route("/runs/{run_id}", page, name="run"),
            Route("/compare", page, name="compare"),
            Route("/models", page, name="models"),
            Route("/healthz", healthz),
            Route("/api/runs", api_runs),
            Route("/api/runs/{run_id}", api_run),
            Route("/api/runs/{run_id}/metrics", api_metrics),
            Route("/api/runs/{run_id}/events", api_events),
            Route("/api/compare", api_compare),
            Route("/api/models", api_models),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={FitstreamError: on_error, ValueError: on_error},
        lifespan=lifespan,
    )
    return TokenGate(app, token)


def _full_run_id(engine: Any, run_ref: str) -> str:
    """The run id a page names (an id or its first characters); as given when the history does not
    have the run yet (queued, or the recorder behind): its events are followed all the same."""
    from pipeline.db.queries import resolve_run_id

    try:
        return resolve_run_id(engine, run_ref)
    except RunNotFoundError:
        return run_ref


def _int(raw: str | None, default: int, *, cap: int = 10_000) -> int:
    try:
        return max(1, min(cap, int(raw))) if raw else default
    except ValueError:
        return default
