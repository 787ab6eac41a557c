"""The load generator behind `advisor bench-serve`: streaming requests to any OpenAI-compatible server.

Arrivals (advisor.llm.workload.Workload.arrival_times): Poisson or constant at a rate, or a trace replayed at its
own timestamps; or closed loop, N users each sending its next request when the previous one ends. With a rate
(or a trace) and --concurrency together, at most N requests are in flight: an arrival waits for a free slot and is
sent late (the send lag is reported), so the rate is capped by N. Lengths come from the workload's length
distributions (or the trace); a workload's shared prefix becomes a common start of every prompt.

Prompts are random common English words by default (portable: any server tokenizes them, about one token a word;
the server's usage.prompt_tokens gives the real count, reported beside the requested one), or token-id lists with
prompt_ids (exact lengths on servers that accept them: vLLM, SGLang). The output length is max_tokens with vLLM's
ignore_eos and min_tokens, which servers without them ignore; stream_options.include_usage asks for the token count.

Each request records the send time, every content chunk's arrival, the end and the tokens (advisor.llm.
serving_metrics.RequestRecord); a failure is recorded with its kind and kept out of the latency figures. Times are
time.perf_counter on one asyncio loop; the HTTP pool is unbounded, so no request waits for a connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from advisor.errors import UserError
from advisor.llm.serving_metrics import UNFINISHED, RequestRecord, measured_wall_s, summarise
from advisor.llm.workload import ARRIVALS, LengthDistribution, Workload

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
DEFAULT_PROMPT_TOKENS = 1024  # vLLM's `bench serve` random dataset defaults
DEFAULT_OUTPUT_TOKENS = 128
DEFAULT_VOCAB_SIZE = 32000  # the smallest common vocabulary (Llama 2, Mistral): ids below it exist in most models
PROBE_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 0.5
_LENGTH_BLOCK = 256  # closed-loop lengths are drawn this many at a time

# Common English words that most BPE vocabularies hold as one token each (with their leading space).
WORDS = tuple("""time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government number night point home
water room mother area money story fact month lot right study book eye job word business issue side kind head house
service friend father power hour game line end member law car city community name president team minute idea kid
body information back parent face level office door health person art war history party result change morning
reason research girl guy moment air teacher force education foot boy age policy music market sense nation plan
college interest death experience effect class control care field development role effort rate heart drug show
leader light voice wife police mind price report decision son view relationship town road arm difference value
building action model season society tax director position player record paper space ground form event official
matter center couple site project activity star table need court oil situation cost industry figure street image
phone data picture practice piece land product doctor wall patient worker news test movie north love support
technology step baby computer type attention film tree source organization hair window evidence population site
""".split())


@dataclass(frozen=True)
class TraceEntry:
    timestamp_s: float
    prompt_tokens: int
    output_tokens: int


class _TraceLine(BaseModel):
    model_config = ConfigDict(extra="ignore")  # traces often carry more (ids, hashes): only these three are read
    timestamp_s: float = Field(ge=0)
    prompt_tokens: int = Field(ge=1)
    output_tokens: int = Field(ge=1)


def load_trace(path: Path | str) -> tuple[TraceEntry, ...]:
    """A JSONL trace, one {"timestamp_s", "prompt_tokens", "output_tokens"} per line, sorted by time; any problem is
    one UserError line naming the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise UserError(f"{path}: cannot read the trace ({error.strerror or error})") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            spec = _TraceLine.model_validate(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {number}: not valid JSON") from None
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(line)"
            raise UserError(f"{path}: line {number}: {where}: {first['msg']}") from None
        entries.append(TraceEntry(spec.timestamp_s, spec.prompt_tokens, spec.output_tokens))
    if not entries:
        raise UserError(f"{path}: the trace holds no requests")
    return tuple(sorted(entries, key=lambda e: e.timestamp_s))


def normalise_url(url: str) -> str:
    """The server's root: `http://host:8000/v1/` -> `http://host:8000` (the endpoints add /v1/...)."""
    text = str(url).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"invalid URL {url!r}: expected http://HOST:PORT or https://HOST[:PORT]")
    return text.removesuffix("/v1")


@dataclass(frozen=True)
class BenchConfig:
    """One bench-serve run. Exactly one of duration_s / num_requests; at least one of rate_rps, concurrency, trace."""

    url: str
    model: str | None = None  # None: the first model GET /v1/models lists
    endpoint: str = "completions"  # completions | chat
    prompt_tokens: LengthDistribution = field(default_factory=lambda: LengthDistribution.fixed(DEFAULT_PROMPT_TOKENS))
    output_tokens: LengthDistribution = field(default_factory=lambda: LengthDistribution.fixed(DEFAULT_OUTPUT_TOKENS))
    shared_prefix_fraction: float = 0.0
    rate_rps: float | None = None
    arrival: str = "poisson"  # poisson | constant
    concurrency: int | None = None
    trace: tuple[TraceEntry, ...] = ()
    duration_s: float | None = 60.0  # arrivals for this long, then the drain
    num_requests: int | None = None
    warmup: int = 1  # requests sent one after another before the measurement, not measured
    request_timeout_s: float = 120.0
    drain_timeout_s: float = 60.0
    prompt_ids: bool = False
    vocab_size: int = DEFAULT_VOCAB_SIZE
    ignore_eos: bool = True
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "url", normalise_url(self.url))
        object.__setattr__(self, "trace", tuple(sorted(self.trace, key=lambda e: e.timestamp_s)))
        if self.endpoint not in ENDPOINTS:
            raise UserError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {self.endpoint!r}")
        if self.arrival not in ARRIVALS:
            raise UserError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if self.rate_rps is None and self.concurrency is None and not self.trace:
            raise UserError("give the load: --rate, --concurrency, --trace or a --workload file with rate_rps")
        if self.trace and self.rate_rps is not None:
            raise UserError("--trace replays the trace's own timestamps: give --rate or --trace, not both")
        if (self.duration_s is None) == (self.num_requests is None):
            raise UserError("give --duration or --num-requests, not both")
        for name in ("rate_rps", "duration_s", "request_timeout_s", "drain_timeout_s"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise UserError(f"{name} must be a positive number, got {value}")
        for name in ("concurrency", "num_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.warmup < 0:
            raise UserError(f"warmup must not be negative, got {self.warmup}")
        if not 0 <= self.shared_prefix_fraction < 1:
            raise UserError(f"shared_prefix_fraction must be in [0, 1), got {self.shared_prefix_fraction}")
        if self.prompt_ids and self.endpoint == "chat":
            raise UserError("--prompt-ids sends token ids to /v1/completions; the chat endpoint takes text only")
        if self.vocab_size < 1:
            raise UserError(f"vocab_size must be at least 1, got {self.vocab_size}")

    @property
    def load(self) -> str:
        if self.trace:
            return "trace" + (f", at most {self.concurrency} in flight" if self.concurrency else "")
        if self.rate_rps is None:
            return f"closed loop, {self.concurrency} users"
        capped = f", at most {self.concurrency} in flight" if self.concurrency else ""
        return f"{self.arrival} at {self.rate_rps:g} rps{capped}"

    def to_dict(self) -> dict:
        """The --json settings block (the API key left out)."""
        lengths = ({"trace_requests": len(self.trace)} if self.trace else
                   {"prompt_tokens": self.prompt_tokens.to_dict(), "output_tokens": self.output_tokens.to_dict()})
        return {"endpoint": ENDPOINTS[self.endpoint], "load": self.load, "rate_rps": self.rate_rps,
                "arrival": None if self.trace or self.rate_rps is None else self.arrival,
                "concurrency": self.concurrency, "duration_s": self.duration_s, "num_requests": self.num_requests,
                **lengths, "shared_prefix_fraction": self.shared_prefix_fraction,
                "prompt": "token ids" if self.prompt_ids else "random words",
                "vocab_size": self.vocab_size if self.prompt_ids else None, "ignore_eos": self.ignore_eos,
                "warmup": self.warmup, "request_timeout_s": self.request_timeout_s,
                "drain_timeout_s": self.drain_timeout_s if self.duration_s is not None else None, "seed": self.seed}


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class RequestPlan:
    index: int
    scheduled_s: float | None  # None: closed loop, sent as soon as a user is free
    prompt_tokens: int
    output_tokens: int


def _rngs(seed: int) -> list[np.random.Generator]:
    """Independent streams for arrivals, lengths, prompts and warm-up: changing one never shifts another."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def arrival_times(config: BenchConfig) -> np.ndarray:
    """The open-loop send times (seconds from the start) for config's rate, arrival process and length of run."""
    workload = Workload(config.prompt_tokens, config.output_tokens, config.rate_rps, config.arrival,
                        config.shared_prefix_fraction, config.duration_s or 1.0)
    if config.duration_s is not None:
        return workload.arrival_times(_rngs(config.seed)[0])
    n = config.num_requests
    window = (n + 10 * math.sqrt(n) + 10) / config.rate_rps  # holds n arrivals but with negligible chance
    while True:  # the same seed gives the same first arrivals whatever the window
        times = Workload(workload.prompt_tokens, workload.output_tokens, workload.rate_rps, workload.arrival,
                         duration_s=window).arrival_times(_rngs(config.seed)[0])
        if len(times) >= n:
            return times[:n]
        window *= 2


def request_plans(config: BenchConfig) -> Iterator[RequestPlan]:
    """The measured requests in send order (closed loop: endless until num_requests; the caller stops at the
    duration)."""
    lengths = _rngs(config.seed)[1]
    if config.trace:
        start = config.trace[0].timestamp_s
        for index, entry in enumerate(config.trace[:config.num_requests]):
            yield RequestPlan(index, entry.timestamp_s - start, entry.prompt_tokens, entry.output_tokens)
        return
    if config.rate_rps is not None:
        times = arrival_times(config)
        prompts = config.prompt_tokens.sample(lengths, len(times))
        outputs = config.output_tokens.sample(lengths, len(times))
        for index, (at, p, o) in enumerate(zip(times, prompts, outputs)):
            yield RequestPlan(index, float(at), int(p), int(o))
        return
    index = 0
    while True:
        prompts = config.prompt_tokens.sample(lengths, _LENGTH_BLOCK)
        outputs = config.output_tokens.sample(lengths, _LENGTH_BLOCK)
        for p, o in zip(prompts, outputs):
            if config.num_requests is not None and index >= config.num_requests:
                return
            yield RequestPlan(index, None, int(p), int(o))
            index += 1


def warmup_plans(config: BenchConfig) -> list[RequestPlan]:
    """Warm-up requests: lengths like the measured ones (the trace's first entries, or drawn from the workload)."""
    if config.trace:
        entries = [config.trace[i % len(config.trace)] for i in range(config.warmup)]
        return [RequestPlan(-1 - i, None, e.prompt_tokens, e.output_tokens) for i, e in enumerate(entries)]
    rng = _rngs(config.seed)[3]
    prompts = config.prompt_tokens.sample(rng, config.warmup)
    outputs = config.output_tokens.sample(rng, config.warmup)
    return [RequestPlan(-1 - i, None, int(p), int(o)) for i, (p, o) in enumerate(zip(prompts, outputs))]


class PromptMaker:
    """Prompts of an exact number of words (or token ids); with a shared prefix fraction f, every prompt starts
    with the same round(f x mean prompt length) words, keeping at least one of its own."""

    def __init__(self, config: BenchConfig):
        self._ids = config.prompt_ids
        self._size = config.vocab_size if config.prompt_ids else len(WORDS)
        self._rng = _rngs(config.seed)[2]
        mean = config.prompt_tokens.mean if not config.trace else float(np.mean([e.prompt_tokens
                                                                               for e in config.trace]))
        self._prefix = self._rng.integers(0, self._size, int(round(config.shared_prefix_fraction * mean)))

    def make(self, tokens: int) -> str | list[int]:
        shared = self._prefix[:max(0, min(len(self._prefix), tokens - 1))]
        picks = np.concatenate([shared, self._rng.integers(0, self._size, tokens - len(shared))])
        if self._ids:
            return [int(i) for i in picks]
        return " ".join(WORDS[i] for i in picks)


def request_body(config: BenchConfig, model: str, prompt: str | list[int], output_tokens: int) -> dict:
    body: dict = {"model": model, "max_tokens": int(output_tokens), "stream": True,
                  "stream_options": {"include_usage": True}}
    if config.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if config.ignore_eos:  # vLLM's extensions: exactly max_tokens out; servers without them ignore the fields
        body["ignore_eos"] = True
        body["min_tokens"] = int(output_tokens)
    return body


# -------------------------------------------------------------------------------------------- the SSE stream


@dataclass(frozen=True)
class SseData:
    """What one `data:` payload said: content text (empty: none), the usage, or an error."""

    text: str = ""
    usage: dict | None = None
    error: str | None = None
    done: bool = False


def parse_sse_data(payload: str, endpoint: str = "completions", event: str | None = None) -> SseData:
    """One SSE `data:` payload of a streamed completion. An `event: error` line before it, a top-level "error"
    key or `"object": "error"` (vLLM) make it an error; text is choices[0].text (completions) or
    choices[0].delta.content / reasoning_content (chat)."""
    payload = payload.strip()
    if payload == "[DONE]":
        return SseData(done=True)
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return SseData(error=f"an SSE event that is not JSON: {payload[:200]}")
    if not isinstance(data, dict):
        return SseData(error=f"an SSE event that is not a JSON object: {payload[:200]}")
    if event == "error" or "error" in data or data.get("object") == "error":
        detail = data.get("error", data)
        message = detail.get("message", detail) if isinstance(detail, dict) else detail
        return SseData(error=str(message)[:300])
    text = ""
    choices = data.get("choices") or []
    if choices and isinstance(choices[0], dict):
        if endpoint == "chat":
            delta = choices[0].get("delta") or {}
            text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
        else:
            text = choices[0].get("text") or ""
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
    return SseData(text=str(text), usage=usage)


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


async def send_request(client: httpx.AsyncClient, config: BenchConfig, model: str, plan: RequestPlan,
                       prompt: str | list[int], clock: Callable[[], float],
                       drained: Callable[[], bool] = lambda: False) -> RequestRecord:
    """One streamed request, timed on `clock`; a failure is recorded, never raised, and so is a cancellation by the
    drain (`drained()` true: the drain timeout ended the run): the request is recorded as unfinished. Any other
    cancellation (Ctrl-C) propagates, so an interrupted run stops at once."""
    sent = clock()
    chunks: list[float] = []
    usage: dict | None = None

    def record(end: float, kind: str | None = None, message: str = "") -> RequestRecord:
        prompt_reported = _count((usage or {}).get("prompt_tokens"))
        completion = _count((usage or {}).get("completion_tokens"))
        if kind is None and not chunks:
            kind, message = "no_content", "the response carried no content (no text in any event)"
        return RequestRecord(plan.index, plan.scheduled_s, sent, tuple(chunks), end, plan.prompt_tokens,
                             plan.output_tokens, prompt_reported,
                             completion if completion is not None else len(chunks),
                             "usage" if completion is not None else "chunks", kind, message)

    body = request_body(config, model, prompt, plan.output_tokens)
    try:
        async with asyncio.timeout(config.request_timeout_s):
            async with client.stream("POST", ENDPOINTS[config.endpoint], json=body) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode("utf-8", "replace")
                    return record(clock(), f"http_{response.status_code}",
                                  f"HTTP {response.status_code}: {' '.join(text.split())[:300]}")
                event = None
                async for line in response.aiter_lines():
                    now = clock()
                    if line.startswith("event:"):
                        event = line[6:].strip()
                        continue
                    if not line.startswith("data:"):
                        continue  # blank separators, ':' comments, id:/retry: fields
                    data = parse_sse_data(line[5:], config.endpoint, event)
                    event = None
                    if data.error is not None:
                        return record(now, "sse_error", data.error)
                    if data.text:
                        chunks.append(now)
                    if data.usage is not None:
                        usage = data.usage
                return record(clock())
    except TimeoutError:
        return record(clock(), "timeout", f"no complete response within {config.request_timeout_s:g} s")
    except httpx.TimeoutException as error:
        return record(clock(), "timeout", f"{type(error).__name__}: {error}")
    except httpx.TransportError as error:
        return record(clock(), "connection", f"{type(error).__name__}: {error}")
    except asyncio.CancelledError:
        if not drained():
            raise
        return record(clock(), UNFINISHED, "still in flight when the drain timeout ended the run")


# ------------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class BenchProgress:
    phase: str  # "warm-up" | "sending" | "draining"
    elapsed_s: float
    sent: int
    completed: int
    errors: int
    in_flight: int


@dataclass(frozen=True)
class BenchRun:
    config: BenchConfig
    model: str
    started_at: str  # UTC, ISO 8601, when the measured requests began
    records: tuple[RequestRecord, ...]  # measured requests, in send order
    warmup_records: tuple[RequestRecord, ...]

    @property
    def wall_s(self) -> float:
        return measured_wall_s(self.records)

    def summary(self, slo_ttft_ms: float | None = None, slo_itl_ms: float | None = None) -> dict:
        """The --json object (advisor.llm.serving_metrics.summarise)."""
        warm_errors = sum(not r.ok for r in self.warmup_records)
        settings = {**self.config.to_dict(), "warmup_errors": warm_errors}
        return summarise(self.records, slo_ttft_ms, slo_itl_ms, self.wall_s, settings=settings,
                         server={"url": self.config.url, "model": self.model}, started_at=self.started_at,
                         seed=self.config.seed)


def _headers(config: BenchConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


def check_server(config: BenchConfig) -> str:
    """GET /v1/models: that the server answers, and the model to ask for (config.model, else the first listed).
    Anything wrong is one UserError line."""
    url = f"{config.url}/v1/models"
    try:
        response = httpx.get(url, headers=_headers(config), timeout=min(PROBE_TIMEOUT_S, config.request_timeout_s),
                             trust_env=False)
    except httpx.HTTPError as error:
        raise UserError(f"cannot reach {config.url}: {' '.join(str(error).split()) or type(error).__name__}") from None
    if response.status_code in (401, 403):
        raise UserError(f"{url} refused the request (HTTP {response.status_code}): give --api-key")
    if config.model:
        return config.model
    if response.status_code != 200:
        raise UserError(f"{url} answered HTTP {response.status_code}: give --model")
    try:
        return str(response.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"{url} lists no model: give --model") from None


def run_benchmark(config: BenchConfig, progress: Callable[[BenchProgress], None] | None = None,
                  model: str | None = None) -> BenchRun:
    """Send the warm-up, then the measured requests; returns every record. Without `model` the server is checked
    first (check_server), which also picks the model."""
    model = model or check_server(config)
    return asyncio.run(_run(config, model, progress))


async def _run(config: BenchConfig, model: str, progress: Callable[[BenchProgress], None] | None) -> BenchRun:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(config.request_timeout_s)
    async with httpx.AsyncClient(base_url=config.url, headers=_headers(config), limits=limits, timeout=timeout,
                                 trust_env=False) as client:
        prompts = PromptMaker(config)
        warm_start = time.perf_counter()
        warm = []
        for plan in warmup_plans(config):
            if progress:
                progress(BenchProgress("warm-up", time.perf_counter() - warm_start, len(warm), 0, 0, 1))
            warm.append(await send_request(client, config, model, plan, prompts.make(plan.prompt_tokens),
                                           lambda: time.perf_counter() - warm_start))
        return BenchRun(config, model, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        tuple(await _measure(client, config, model, prompts, progress)), tuple(warm))


async def _measure(client, config: BenchConfig, model: str, prompts: PromptMaker,
                   progress: Callable[[BenchProgress], None] | None) -> list[RequestRecord]:
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    records: list[RequestRecord] = []
    tasks: set[asyncio.Task] = set()
    limiter = asyncio.Semaphore(config.concurrency) if config.concurrency else None
    phase = ["sending"]
    drain_ended = [False]  # set just before the drain cancels what is still in flight

    def finished(task: asyncio.Task) -> None:
        tasks.discard(task)
        if limiter is not None:
            limiter.release()
        if not task.cancelled():  # cancelled before its first step: never sent, nothing to record
            records.append(task.result())

    async def tick() -> None:
        while True:
            errors = sum(not r.ok for r in records)
            progress(BenchProgress(phase[0], clock(), len(records) + len(tasks), len(records) - errors, errors,
                                   len(tasks)))
            await asyncio.sleep(PROGRESS_EVERY_S)

    ticker = asyncio.create_task(tick()) if progress else None
    try:
        for plan in request_plans(config):
            if plan.scheduled_s is not None:
                if config.duration_s is not None and plan.scheduled_s >= config.duration_s:
                    break
                if (delay := plan.scheduled_s - clock()) > 0:
                    await asyncio.sleep(delay)
            if limiter is not None:
                await limiter.acquire()
            if config.duration_s is not None and clock() >= config.duration_s:
                if limiter is not None:
                    limiter.release()
                break
            prompt = prompts.make(plan.prompt_tokens)
            task = asyncio.create_task(send_request(client, config, model, plan, prompt, clock,
                                                    lambda: drain_ended[0]))
            tasks.add(task)
            task.add_done_callback(finished)
        phase[0] = "draining"
        if tasks:
            drain = config.drain_timeout_s if config.duration_s is not None else None
            _, pending = await asyncio.wait(set(tasks), timeout=drain)
            drain_ended[0] = True
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        if ticker is not None:
            ticker.cancel()
    return sorted(records, key=lambda r: r.sent_s)
