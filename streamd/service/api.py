"""The daemon's HTTP API (FastAPI served by uvicorn in a background thread).

/metrics, /healthz and /readyz are always open (scrapers and the kubelet's probes send no credentials,
and none of them reveals a secret); with a token
set, every other path, the OpenAPI description included, needs ``Authorization: Bearer <token>``.
Request paths reach the filesystem only after validation: the version must be ``vNNNNNN`` or an
alias and name an existing snapshot, and a file name must be one the manifest lists. Alias moves
(POST) need the token to be set at all: an API without one serves read-only.
"""
from __future__ import annotations

import hmac
import socket
import threading
from pathlib import Path
from typing import Callable

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamd.errors import LocalIOError, NotFoundError, UsageError
from streamd.service import aliases
from streamd.service.metrics import Metrics
from streamd.service.snapshots import MANIFEST, list_versions, read_manifest, resolve_version, sha256_file

OPEN_PATHS = {"/metrics", "/healthz", "/readyz"}
VERSION_PARAM = PathParam(pattern=r"^(v\d{6}|[a-z][a-z0-9_-]{0,31})$", description="vNNNNNN or an alias (latest, ...)")
ALIAS_PARAM = PathParam(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="an alias: latest, stable, ... (not vNNNNNN)")


class Promotion(BaseModel):
    version: str = Field(description="vNNNNNN, or another alias to copy")


def build_app(snapshot_root: Path, metrics: Metrics, ready: Callable[[], bool], token: str | None = None) -> FastAPI:
    app = FastAPI(title="streamd", description="Continual SSL daemon: versioned encoder snapshots and metrics.",
                  version="1")
    app.state.snapshot_root = snapshot_root

    # Enforced by the middleware below (which also covers /openapi.json and /docs); the dependency
    # only declares the bearer scheme on the protected operations of the OpenAPI description.
    protected = [Depends(HTTPBearer(auto_error=False))] if token else []
    if token:
        expected = f"Bearer {token}".encode()

        @app.middleware("http")
        async def require_token(request: Request, call_next):
            given = request.headers.get("authorization", "").encode()
            if request.url.path not in OPEN_PATHS and not hmac.compare_digest(given, expected):
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    def snapshot(version: str) -> tuple[Path, dict]:
        """The folder and manifest of a validated version; 404 also when retention removed it meanwhile."""
        name = resolve_version(snapshot_root, version)
        try:
            if name is not None:
                return snapshot_root / name, read_manifest(snapshot_root / name)
        except (OSError, ValueError):
            pass
        raise HTTPException(404, f"no snapshot {version}")

    @app.get("/metrics", summary="Prometheus exposition")
    def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness: the process serves requests")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and sources connected")
    def readyz() -> JSONResponse:
        ok = bool(ready())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v1/snapshots", summary="All published snapshots, oldest first", dependencies=protected)
    def snapshots() -> dict:
        items = []
        for name in list_versions(snapshot_root):
            try:
                m = read_manifest(snapshot_root / name)
            except (OSError, ValueError):  # pruned while listing
                continue
            items.append({k: m.get(k) for k in ("version", "name", "created_at", "reason", "task", "segment", "step")})
        return {"latest": resolve_version(snapshot_root, "latest"), "snapshots": items}

    @app.get("/v1/snapshots/{version}", summary="The manifest of one snapshot", dependencies=protected)
    def snapshot_manifest(request: Request, version: str = VERSION_PARAM) -> Response:
        """ETag = sha256 of manifest.json: a client polling ``latest`` gets 304 while it has not moved."""
        folder, manifest = snapshot(version)
        etag = f'"{sha256_file(folder / MANIFEST)}"'
        if _not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        return JSONResponse(manifest, headers={"ETag": etag})

    @app.get("/v1/snapshots/{version}/files/{name}", dependencies=protected,
             summary="Download a snapshot file (ETag = sha256; If-None-Match, Range and HEAD supported)")
    def file(request: Request, version: str = VERSION_PARAM, name: str = PathParam()) -> Response:
        folder, manifest = snapshot(version)
        files = manifest["files"]
        if name == MANIFEST:
            digest = sha256_file(folder / MANIFEST)
        elif name in files:
            digest = files[name]
        else:
            raise HTTPException(404, f"{folder.name} has no file {name!r}")
        etag = f'"{digest}"'
        if _not_modified(request, etag):
            return Response(status_code=304, headers={"ETag": etag})
        return FileResponse(folder / name, headers={"ETag": etag}, filename=name)

    app.add_api_route("/v1/snapshots/{version}/files/{name}", file, methods=["HEAD"], include_in_schema=False,
                      dependencies=protected)

    @app.get("/v1/aliases", summary="Every alias and the version it names", dependencies=protected)
    def alias_list() -> dict:
        return {"aliases": aliases.list_aliases(snapshot_root)}

    def change(request: Request, move: Callable[[str], dict]) -> dict:
        """Runs an alias move for an authenticated caller; the actor in the audit log is its address."""
        if not token:
            raise HTTPException(403, "alias changes need the API token set (api.token)")
        try:
            return move(f"api:{request.client.host if request.client else '?'}")
        except NotFoundError as e:
            raise HTTPException(404, str(e)) from e
        except UsageError as e:
            raise HTTPException(422, str(e)) from e

    @app.post("/v1/aliases/{alias}", summary="Point an alias at a version (token required; audited)",
              dependencies=protected)
    def alias_promote(request: Request, body: Promotion, alias: str = ALIAS_PARAM) -> dict:
        return change(request, lambda actor: aliases.promote(snapshot_root, alias, body.version, actor))

    @app.post("/v1/aliases/{alias}/rollback", summary="Point an alias back where it was before its last move "
              "(token required; audited)", dependencies=protected)
    def alias_rollback(request: Request, alias: str = ALIAS_PARAM) -> dict:
        return change(request, lambda actor: aliases.rollback(snapshot_root, alias, actor))

    return app


def _not_modified(request: Request, etag: str) -> bool:
    return etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]


class ApiServer:
    """Serves the app from a background thread so the training loop keeps the main thread."""

    def __init__(self, host: str, port: int, snapshot_root: Path, metrics: Metrics,
                 ready: Callable[[], bool], token: str | None = None):
        self.host = host
        self.port = port
        self.app = build_app(Path(snapshot_root), metrics, ready, token)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))  # bound here so that port 0 resolves before start() returns
        except OSError as e:  # a port in use, an address not on this host: the user picks another
            sock.close()
            raise LocalIOError(f"cannot serve the HTTP API on {self.host}:{self.port}: {e.strerror or e} "
                               "(change api.host/api.port, e.g. STREAMD_API__PORT)") from e
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="streamd-api", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError(f"HTTP API failed to start on {self.host}:{self.port}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None
