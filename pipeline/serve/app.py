"""The FastAPI application of ``dprdm serve``: authentication, the JSON error contract, limits, the access log.

Endpoints: ``POST /v1/generations``, ``GET /v1/budget``, ``GET /v1/shards`` (the caller's only), ``GET /healthz``,
``GET /`` (the web page), OpenAPI at ``/docs``. Callers send ``Authorization: Bearer TOKEN``.

Errors are ``{"error": {"type": TYPE, "message": ...}}`` with a stable ``type``: 401 ``unauthorized`` /
``key_revoked``, 403 ``shard_forbidden``, 429 ``quota_exhausted``, 409 ``budget_exhausted`` (a shard's global
budget), 409 ``budget_not_configured`` (a shard without a scope), 409 ``compartments_unavailable``, 413
``payload_too_large``, 422 ``invalid_request``, 503 ``ledger_unavailable``, 503 ``compartments_damaged``, 404
``not_found``, 500 ``internal_error``. Messages are written by dprdm and never carry anything about private records.

The access log (logger ``pipeline.serve.access``) has one line per request: request id, key name, status and
time; never the prompt, neighbours, scores or noise. Request bodies above ``max_body_bytes`` are refused (413)
before the app reads them. No CORS headers unless origins are configured.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.serve.errors import ApiError, InvalidRequest
from pipeline.serve.keys import ApiKey
from pipeline.serve.service import GenerationRequest, ServeConfig, Service, config_from_environment

__all__ = ["create_app", "create_app_from_environment"]

access_log = logging.getLogger("pipeline.serve.access")
logger = logging.getLogger(__name__)
_BEARER = HTTPBearer(auto_error=False, description="The token printed once by 'dprdm keys add'.")


class GenerationBody(BaseModel):
    """``POST /v1/generations``: exactly one of ``prompt`` and ``image`` (base64)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str | None = Field(None, min_length=1, max_length=2000, description="Text query (public).")
    image: str | None = Field(None, description="Image query (public), base64-encoded PNG/JPEG/... bytes.")
    n: int = Field(1, ge=1, le=64, description="Images decoded from the one private query.")
    lambda_: float = Field(1.0, alias="lambda", ge=0.0, le=1.0, description="c = λ·noisy + (1−λ)·query; 0 = uncharged.")
    steps: int = Field(25, ge=1, le=1000, description="Decoder denoising steps.")
    guidance: float = Field(2.0, ge=0.0, le=100.0, description="Classifier-free guidance scale.")
    shards: list[str] | None = Field(None, max_length=64, description="Shards to query (default: all of the key's).")
    compose: bool = Field(False, description="Decode with the shards' compartments composed (CDM; 'dprdm compartments "
                          "train' first); the response adds shard_weights.")
    weights: Literal["posterior", "naive"] | None = Field(
        None, description="With compose: posterior (w = P(shard | x_t), the default) or naive (w = shard size)."
    )
    eta: float | None = Field(None, description="With compose: DDIM's η in [0, 1] (0 = deterministic DDIM, the "
                              "default; 1 = ancestral).")
    base_guidance: float | None = Field(None, description="With compose: g in [1, 10] in ε_base + g (ε̂ − ε_base), "
                                        "the public base decoder as the weaker model (1 = plain composition).")


def _sampler(body: GenerationBody) -> tuple[float, float]:
    """The composed sampler's (η, g) of a request, checked by the one validator (defaults: η = 0, g = 1)."""
    from pipeline.compartments.decoder import check_sampler
    from pipeline.errors import PipelineInputError

    eta = 0.0 if body.eta is None else body.eta
    base_guidance = 1.0 if body.base_guidance is None else body.base_guidance
    try:
        return check_sampler(eta, base_guidance, names=("eta", "base_guidance"))
    except PipelineInputError as err:
        raise InvalidRequest(str(err)) from err


def _error(status: int, kind: str, message: str, request_id: str | None = None) -> JSONResponse:
    headers = {"X-Request-Id": request_id} if request_id else None
    if status == 401:
        headers = (headers or {}) | {"WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


class _Guard:
    """Pure ASGI middleware: request id, body size limit (413 before the app reads it), one access-log line."""

    def __init__(self, app: Any, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), [500]

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                status[0] = 413
                await _error(
                    413, "payload_too_large", f"request body over {self.max_body_bytes} bytes; send a smaller image",
                    request_id,
                )(scope, receive, send)
                return
            replayed = [False]

            async def replay() -> dict:
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_with_id)
        finally:
            key = scope.get("state", {}).get("key_name") or "-"
            access_log.info(
                "request=%s key=%s status=%d ms=%.1f", request_id, key, status[0], 1000 * (time.perf_counter() - started)
            )

    async def _read_body(self, scope: dict, receive: Any) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def create_app(config: ServeConfig, *, service: Service | None = None) -> Any:
    """Build the ASGI app of ``dprdm serve`` (opens the service unless one is given).

    Returns:
        The ASGI application (FastAPI wrapped in the request guard). Its ``.fastapi`` and ``.service`` attributes
        are the FastAPI app and the :class:`Service`.
    """
    svc = service if service is not None else Service.open(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        svc.close()

    api = FastAPI(
        title="dprdm serve",
        version="1",
        description="Differentially private retrieval-augmented generation over HTTP. Every generation is charged "
        "to the index's privacy ledger (committed) before anything is returned.",
        lifespan=lifespan,
    )
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        api.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.kind, str(err), getattr(request.state, "request_id", None))

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for problem in err.errors()[:5]:  # field and reason only: the submitted values are never echoed
            where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {problem.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request", request.state.request_id)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return _error(err.status_code, kind, str(err.detail), getattr(request.state, "request_id", None))

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        logger.error("request=%s unexpected %s", request_id, type(err).__name__)
        return _error(500, "internal_error", f"unexpected server error; report request id {request_id}", request_id)

    def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> ApiKey:  # noqa: B008
        key = svc.keys.authenticate(None if credentials is None else credentials.credentials)
        request.state.key_name = key.name
        return key

    @api.post("/v1/generations", summary="One private generation (charged before anything is returned)")
    def generations(body: GenerationBody, key: ApiKey = Depends(caller)) -> dict[str, Any]:  # noqa: B008
        if (body.prompt is None) == (body.image is None):
            raise InvalidRequest("pass exactly one of 'prompt' and 'image'")
        if body.n > svc.config.max_images:
            raise InvalidRequest(f"n must be at most {svc.config.max_images} on this server")
        if body.steps > svc.config.max_steps:
            raise InvalidRequest(f"steps must be at most {svc.config.max_steps} on this server")
        for option in ("weights", "eta", "base_guidance"):
            if getattr(body, option) is not None and not body.compose:
                raise InvalidRequest(f"{option} needs \"compose\": true; leave it out otherwise")
        request = GenerationRequest(
            prompt=body.prompt, image=body.image, n=body.n, lambda_=body.lambda_, steps=body.steps,
            guidance=body.guidance, shards=None if body.shards is None else tuple(body.shards),
            compose=(body.weights or "posterior") if body.compose else None,
            sampler=_sampler(body),
        )
        return svc.generate(key, request)

    @api.get("/v1/budget", summary="The key's quota and its shards' privacy budgets")
    def budget(key: ApiKey = Depends(caller)) -> dict[str, Any]:  # noqa: B008
        return svc.budget(key)

    @api.get("/v1/shards", summary="The shards this key may query")
    def shards(key: ApiKey = Depends(caller)) -> dict[str, Any]:  # noqa: B008
        return {"shards": svc.shards(key)}

    @api.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    page = files("pipeline.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                           "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    guarded = _Guard(api, max_body_bytes=config.max_body_bytes)
    guarded.fastapi = api  # type: ignore[attr-defined]
    guarded.service = svc  # type: ignore[attr-defined]
    return guarded


def create_app_from_environment() -> Any:
    """uvicorn factory for ``dprdm serve --workers N`` (each worker process opens its own service)."""
    return create_app(config_from_environment())


def describe(config: ServeConfig) -> str:
    """One line for the server's start-up message."""
    return json.dumps({"index": str(config.index_dir), "max_batch": config.max_batch,
                       "group_commit": config.group_commit})  # fmt: skip
