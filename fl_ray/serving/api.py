"""The OpenAI-compatible HTTP API (FastAPI) over an :class:`~fl_ray.serving.engine.Engine`.

Routes follow the OpenAI REST reference: ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``, plus ``GET /healthz``. Errors use OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``); anything the caller got wrong is a 4xx,
never a 500. Every response -- errors included -- carries the served run, round and receipt hash
in ``X-FL-Ray-*`` headers, and successful bodies repeat them under ``"fl_ray"``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fl_ray.serving.engine import Engine, PromptRejected
from fl_ray.serving.generation import Generation, SamplingParams

MAX_STOP_STRINGS = 4  # the OpenAI API's limit
MAX_PROMPTS = 16


class _Request(BaseModel):
    # strict: "0.5" is not a temperature and 3.0 is not max_tokens; unknown OpenAI fields
    # (user, logit_bias, ...) are ignored so stock clients work unchanged.
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    n: Literal[1] = 1
    stream: Literal[False] = False
    seed: int | None = None

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
        )


class CompletionRequest(_Request):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class ApiError(Exception):
    """A request refused with an OpenAI-shaped error body and a 4xx status."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_body(message: str, kind: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _usage(gens: list[Generation]) -> dict[str, int]:
    prompt = sum(g.prompt_tokens for g in gens)
    completion = sum(g.completion_tokens for g in gens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def build_api(engine: Engine, default_max_tokens: int = 64) -> FastAPI:
    """A FastAPI app answering for ``engine``; the Serve deployment mounts it per replica."""
    app = FastAPI(title="fl_ray", docs_url=None, redoc_url=None, openapi_url=None)
    stamp = engine.provenance.as_json()
    stamp_headers = engine.provenance.headers()

    @app.middleware("http")
    async def _provenance_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(stamp_headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(
                _error_body("request body is not valid JSON", "invalid_request_error"), 400
            )
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(_error_body(message, "invalid_request_error", param), 400)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        body = _error_body(err.message, "invalid_request_error", err.param, err.code)
        return JSONResponse(body, err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            _error_body(str(err.detail), "invalid_request_error"), err.status_code, err.headers
        )

    def check(req: _Request) -> SamplingParams:
        if req.model != engine.model_id:
            raise ApiError(
                404,
                f"model {req.model!r} is not served here (this server serves {engine.model_id!r})",
                "model",
                "model_not_found",
            )
        if req.max_tokens is not None and req.max_tokens >= engine.context:
            raise ApiError(
                400,
                f"max_tokens {req.max_tokens} is above this model's limit of "
                f"{engine.context - 1} (context {engine.context} tokens)",
                "max_tokens",
            )
        return req.sampling(min(default_max_tokens, engine.context - 1))

    def run(fn, *args) -> Generation:
        try:
            return fn(*args)
        except PromptRejected as err:
            raise ApiError(400, str(err), err.param) from None

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> JSONResponse:
        params = check(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        gens = [run(engine.complete, p, params) for p in prompts]
        body = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": engine.model_id,
            "choices": [
                {"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None}
                for i, g in enumerate(gens)
            ],
            "usage": _usage(gens),
            "fl_ray": stamp,
        }
        return JSONResponse(body)

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest) -> JSONResponse:
        params = check(req)
        messages = [m.model_dump() for m in req.messages]
        gen = run(engine.chat, messages, params)
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": engine.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": gen.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage([gen]),
            "fl_ray": stamp,
        }
        return JSONResponse(body)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {
            "id": engine.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "fl-ray",
            "context_length": engine.context,
            "fl_ray": stamp,
        }
        return {"object": "list", "data": [card]}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": engine.model_id, "fl_ray": stamp}

    return app
