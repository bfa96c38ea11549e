"""The simulated OpenAI-compatible model server: an aiohttp app with seeded answers, latency and injected faults.

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/responses, POST /tokenize, GET /health, GET /stats,
and the Files and Batch APIs (/v1/files, /v1/batches: batches.py), whose lines get the same answers as live calls.
Latency is only ever `asyncio.sleep`, so one process serves thousands of requests in flight.
Requests that ask for token ids or logprobs get ids from a real BPE tokenizer and Jinja chat template (bpe.py), with
optional drift (`--drift-*`); the others are counted in words and never load the tokenizer.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import logging
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollouts.sim.answers import respond
from rollouts.sim.batches import BatchStore
from rollouts.sim.protocol import (
    BodyBuilder,
    PromptTokens,
    RequestError,
    SimRequest,
    chat_body,
    error_body,
    logprob_values,
    parse_chat,
    parse_responses,
    responses_body,
)
from rollouts.sim.tokens import Generation, generate, render_prompt, tokenize

if TYPE_CHECKING:
    from rollouts.sim.bpe import ChatTokenizer

try:  # orjson comes with prefect; plain json is the fallback
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


logger = logging.getLogger("rollouts.sim")
Parser = Callable[[Any], SimRequest]
_MAX_TRACKED_BODIES = 200_000


class SimConfig(BaseModel):
    """Options of the simulated server; each field is also a command-line flag (`latency_ms` -> `--latency-ms`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(0, ge=0, le=65535, description="port to listen on; 0 picks a free one")
    latency_ms: float = Field(50.0, ge=0, description="mean latency per request, in milliseconds")
    latency_jitter_ms: float = Field(0.0, ge=0, description="standard deviation of the latency, in milliseconds")
    seed: int = Field(0, description="server seed: with a request's seed and prompt, fixes its answer")
    model: str = Field("sim-model", description="model name listed by /v1/models (any name is accepted)")
    fail_rate: float = Field(0.0, ge=0, le=1, description="fraction of requests answered 500, after the usual latency")
    rate_limit_rate: float = Field(
        0.0, ge=0, le=1, description="fraction of requests answered 429 at once, with Retry-After"
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After value sent with 429, in seconds")
    rate_limit_rps: float = Field(
        0.0,
        ge=0,
        description="requests per second above which requests are answered 429 at once with Retry-After, "
        "like a hosted API's rate limit (a token bucket holding one second of requests); 0 = no limit",
    )
    slow_rate: float = Field(0.0, ge=0, le=1, description="fraction of requests that wait --slow-ms before answering")
    slow_ms: float = Field(30_000.0, ge=0, description="delay of slow requests, in milliseconds")
    capacity: int = Field(
        0, ge=0, description="requests in flight before latency grows in proportion, like a busy GPU; 0 = unlimited"
    )
    capacity_exponent: float = Field(
        1.0,
        ge=1.0,
        description="above --capacity latency grows as (in flight / capacity) to this power: above 1, throughput "
        "falls past the knee, as a GPU's does when batches outgrow its memory",
    )
    latency_per_request_ms: float = Field(
        0.0, ge=0, description="latency added per request in flight, in milliseconds: latency grows linearly with load"
    )
    tokens_per_s: float | None = Field(None, gt=0, description="decode speed: adds output tokens / this to latency")
    reasoning: bool = Field(True, description="return a short reasoning text, as vLLM's reasoning parsers do")
    # Token drift (rollouts/sim/bpe.py): only requests that ask for token ids or logprobs see it.
    drift_retokenize_args: bool = Field(
        False, description="emit tool-call arguments with a non-canonical tokenization that the next prompt re-encodes"
    )
    drift_strip_think: bool = Field(
        False, description="chat template drops the <think> reasoning of earlier assistant turns"
    )
    drift_turn_token: bool = Field(
        False, description="chat template closes earlier assistant turns with a <|turn_end|> token never generated"
    )
    # Batch API (rollouts/sim/batches.py)
    batch_api: bool = Field(
        True, description="serve the Files and Batch APIs; --no-batch-api: a server without them (404, as vLLM's)"
    )
    batch_delay_s: float = Field(1.0, ge=0, description="time a batch takes to process all its requests, in seconds")
    batch_fail_rate: float = Field(0.0, ge=0, le=1, description="fraction of batch requests that fail with 500")
    batch_expire: int = Field(
        0,
        ge=-1,
        description="how many batches, the first created, expire after "
        "--batch-delay-s with half their requests done instead of completing; -1 = all",
    )
    batch_max_requests: int = Field(50_000, ge=1, description="requests allowed in one batch input file")

    @model_validator(mode="after")
    def _rates_fit(self) -> SimConfig:
        if self.fail_rate + self.rate_limit_rate + self.slow_rate > 1:
            raise ValueError("fail_rate + rate_limit_rate + slow_rate must not exceed 1")
        return self

    def to_argv(self) -> list[str]:
        """The command-line flags that rebuild this config (only those that differ from the defaults)."""
        argv: list[str] = []
        for name, value in self.model_dump(exclude_defaults=True).items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv += [flag, str(value)]
        return argv


def _digest(*parts: object) -> int:
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_dumps(body), status=status, headers=headers, content_type="application/json")


def load_latency(config: SimConfig, seconds: float, in_flight: int) -> float:
    """A request's latency with `in_flight` requests at the server (itself included): `seconds` plus
    --latency-per-request-ms per request, times (in flight / --capacity) ** --capacity-exponent above capacity."""
    seconds += in_flight * config.latency_per_request_ms / 1000
    if config.capacity and in_flight > config.capacity:
        seconds *= (in_flight / config.capacity) ** config.capacity_exponent
    return seconds


class TokenBucket:
    """--rate-limit-rps: `rate` tokens a second, holding one second of them (full at the start); 0 = no limit."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens, self.refilled = max(rate, 1.0), now

    def take(self, now: float) -> bool:
        """Take a token at `now`: False when there is none (the request is refused)."""
        if not self.rate:
            return True
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SimApp:
    """State and handlers of one simulated server: counters, the fault draw and the answer pipeline."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.started = time.monotonic()
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.by_endpoint: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self._unseeded = itertools.count()
        self._attempts: dict[bytes, int] = {}  # body digest -> faults so far, so a retry draws afresh
        self._fault_rate = config.fail_rate + config.rate_limit_rate + config.slow_rate
        self._bucket = TokenBucket(config.rate_limit_rps, time.monotonic())
        self._chat_tokenizer: ChatTokenizer | None = None  # loaded on the first request that asks for token ids
        self.batches = BatchStore(config, self.answer_batch_line)

    def chat_tokenizer(self) -> ChatTokenizer:
        if self._chat_tokenizer is None:
            from rollouts.sim.bpe import ChatTokenizer, Drift

            config = self.config
            drift = Drift(config.drift_retokenize_args, config.drift_strip_think, config.drift_turn_token)
            self._chat_tokenizer = ChatTokenizer(drift)
        return self._chat_tokenizer

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_get("/health", self.health)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/tokenize", self.tokenize)  # vLLM's, at the root as vLLM serves it
        if self.config.batch_api:
            self.batches.install(app)
        return app

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's chat `/tokenize`: the prompt ids of `messages` (+ `tools`), with the generation prompt."""
        try:
            sim_request = parse_chat(json.loads(await request.read()))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            return _json(error_body(f"invalid JSON body: {exc}"), status=400)
        except RequestError as exc:
            return _json(error_body(str(exc)), status=400)
        ids = self.chat_tokenizer().prompt_ids(sim_request.turns, sim_request.tool_names)
        return _json({"count": len(ids), "max_model_len": 1 << 20, "tokens": ids})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "by_endpoint": dict(self.by_endpoint),
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.config.model, "object": "model", "created": int(self.started), "owned_by": "rollouts-sim"}
        return _json({"object": "list", "data": [model]})

    async def chat(self, request: web.Request) -> web.Response:
        return await self._count("chat", request, parse_chat, chat_body)

    async def responses(self, request: web.Request) -> web.Response:
        return await self._count("responses", request, parse_responses, responses_body)

    async def _count(self, endpoint: str, request: web.Request, parse: Parser, build: BodyBuilder) -> web.Response:
        self.requests += 1
        self.by_endpoint[endpoint] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._answer(request, parse, build)
        except asyncio.CancelledError:
            self.by_status["499"] += 1  # the client went away mid-sleep (nginx's name for it)
            raise
        except Exception:
            logger.exception("simulated server failed on a request")
            response = _json(error_body("internal error in rollouts-sim", "server_error"), status=500)
        finally:
            self.in_flight -= 1
        self.by_status[str(response.status)] += 1
        return response

    def _fault(self, body: bytes) -> tuple[str | None, random.Random]:
        """Draw this attempt's fault from (server seed, body, attempt number): retries of a body draw afresh."""
        key = hashlib.blake2b(body, digest_size=16).digest()
        attempt = self._attempts.get(key, 0)
        rng = random.Random(_digest(self.config.seed, key.hex(), attempt))
        draw = rng.random()
        config = self.config
        fault = None
        if draw < config.fail_rate:
            fault = "500"
        elif draw < config.fail_rate + config.rate_limit_rate:
            fault = "429"
        elif draw < self._fault_rate:
            fault = "slow"
        if fault is None:
            self._attempts.pop(key, None)
        else:
            self.faults[fault] += 1
            if len(self._attempts) >= _MAX_TRACKED_BODIES:
                self._attempts.pop(next(iter(self._attempts)))
            self._attempts[key] = attempt + 1
        return fault, rng

    def _over_rate(self) -> bool:
        """Take a token from the --rate-limit-rps bucket; True when there is none left and the request is refused."""
        if self._bucket.take(time.monotonic()):
            return False
        self.faults["rate_limit_rps"] += 1
        return True

    def _latency(self, rng: random.Random | None, generation: Generation) -> float:
        config = self.config
        seconds = config.latency_ms / 1000
        if config.latency_jitter_ms and rng is not None:
            seconds = max(0.0, rng.gauss(seconds, config.latency_jitter_ms / 1000))
        if config.tokens_per_s:
            seconds += len(generation.tokens) / config.tokens_per_s
        return load_latency(config, seconds, self.in_flight)

    async def _answer(self, request: web.Request, parse: Parser, build: BodyBuilder) -> web.Response:
        status, payload, headers = await self.answer(await request.read(), parse, build)
        return _json(payload, status=status, headers=headers)

    async def answer_batch_line(self, url: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """One batch request's answer: the live one, without the live faults and latency."""
        pair = (parse_chat, chat_body) if url.endswith("/chat/completions") else (parse_responses, responses_body)
        status, payload, _ = await self.answer(body, *pair, live=False)
        return status, payload

    async def answer(
        self, body: bytes, parse: Parser, build: BodyBuilder, *, live: bool = True
    ) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        """(status, body, headers) of one request; `live=False` skips the injected faults and the latency."""
        try:
            sim_request = parse(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            return 400, error_body(f"invalid JSON body: {exc}"), None
        except RequestError as exc:
            return 400, error_body(str(exc)), None
        fault, fault_rng = None, None
        if live and self._over_rate():
            fault = "429"
        elif live and (self._fault_rate or self.config.latency_jitter_ms):
            fault, fault_rng = self._fault(body)
        if fault == "429":
            retry_after = f"{self.config.retry_after_s:g}"
            message = f"rate limited by rollouts-sim; retry after {retry_after} s"
            headers = {"Retry-After": retry_after}
            return 429, error_body(message, "rate_limit_error", "rate_limit_exceeded"), headers

        # The word-level rendering seeds the answer, so an answer never depends on whether token ids were asked.
        prompt = render_prompt(sim_request.turns, sim_request.tool_names)
        seed = sim_request.seed if sim_request.seed is not None else f"auto-{next(self._unseeded)}"
        rng = random.Random(_digest(self.config.seed, seed, prompt))
        answer = respond(
            sim_request.turns, sim_request.tools, rng, sim_request.temperature, parallel=sim_request.parallel_tool_calls
        )
        reasoning = answer.reasoning if self.config.reasoning else ""
        if sim_request.wants_tokens:  # the real tokenizer and chat template
            chat = self.chat_tokenizer()
            generation = chat.generation(reasoning, answer.content, answer.tool_calls, sim_request.max_tokens)
            ids = chat.prompt_ids(sim_request.turns, sim_request.tool_names, sim_request.truncate_prompt_tokens)
            prompt_tokens = PromptTokens(len(ids), ids)
        else:  # counted in words: cheaper, and nobody sees ids
            generation = generate(reasoning, answer.content, answer.tool_calls, sim_request.max_tokens)
            prompt_tokens = PromptTokens(len(tokenize(prompt)), None)
        wants_logprobs = sim_request.logprobs or sim_request.return_token_ids
        logprobs = logprob_values(rng, len(generation.tokens)) if wants_logprobs else []

        delay = self.config.slow_ms / 1000 if fault == "slow" else self._latency(fault_rng, generation)
        if delay and live:
            await asyncio.sleep(delay)
        if fault == "500":
            return 500, error_body("simulated server error", "server_error"), None
        return 200, build(sim_request, generation, prompt_tokens, logprobs), None


async def start(config: SimConfig) -> tuple[web.AppRunner, str]:
    """Start serving on the running loop; returns the runner (to clean up) and the base URL ending in /v1."""
    server = SimApp(config)
    # A short shutdown grace: slow requests (30 s by default) must not hold up stopping the server.
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError:
        sock.close()
        await runner.cleanup()
        raise
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    host, port = sock.getsockname()[:2]
    display_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{display_host}:{port}/v1"


async def serve(config: SimConfig) -> None:
    """Serve until SIGINT or SIGTERM, announcing the URL on stdout for launchers."""
    runner, url = await start(config)
    print(f"rollouts-sim listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollouts sim-server",
        description="Simulated OpenAI-compatible model server (Chat Completions and Responses APIs) for demos, "
        "tests and benchmarks.",
    )
    for name, field in SimConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} (default: {field.default})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
            continue
        # int, float and str fields parse as themselves, `float | None` as float (pydantic types `annotation` as a
        # type form, which argparse's `type` does not take: the membership test is what makes the cast true)
        kind = cast(Callable[[str], Any], field.annotation) if field.annotation in (int, float, str) else float
        parser.add_argument(flag, type=kind, default=field.default, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = SimConfig(**vars(args))
    except ValueError as exc:
        print(f"rollouts sim-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"rollouts sim-server: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass
