"""An OpenAI-compatible HTTP server over a GenerationEngine: /v1/completions and /v1/chat/completions, streamed
(server-sent events) or whole, plus /v1/models and /health.

Threads: the standard library's ThreadingHTTPServer answers each connection in its own thread; ONE scheduler thread
owns the engine (the only caller of add/step/cancel). Requests wait in a bounded queue; between two engine steps the
scheduler admits waiting requests while the engine has room (continuous batching), then steps while anything is
active and hands each token to its request's thread, which detokenises it and writes it to the client.

Admission is exact: a request is accepted when it can start now (a free batch slot) or take one of max_queue waiting
places; otherwise it is answered at once with 429. While stopping, everything new gets 503. The engine raising
fails the requests it was running (500, or an SSE error event once a stream has started); the server keeps serving.
Decoding is greedy: sampling parameters that would change the output (temperature > 0, top_p < 1, n > 1, ...) are
refused with 400 rather than silently ignored.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import select
import signal
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from advisor.errors import UserError
from advisor.llm.engine_api import GenerationEngine, GenerationRequest, TokenEvent

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
_CLIENT_CHECK_S = 0.1  # how often a request's thread looks for a vanished client while it waits for tokens
_SOCKET_TIMEOUT_S = 30.0  # idle keep-alive connections, a body that never arrives, a client that stops reading
_HANDLERS_FINISH_S = 2.0  # after the scheduler stops, how long stop() lets request threads write their last words
_SCHEDULER_JOIN_S = 30.0  # a step in progress when stop() comes is allowed to finish
_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (see OpenAIServer.url)
    max_queue: int = 64  # requests waiting for a batch slot; one more is answered 429
    request_timeout_s: float = 600  # from arrival to the last token; past it the request is cancelled (504)
    default_max_tokens: int = 16  # when a request names none, on both endpoints (OpenAI's /v1/completions default)

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise UserError(f"port must be between 0 and 65535, got {self.port}")
        if self.max_queue < 0:
            raise UserError(f"max_queue must be 0 or more, got {self.max_queue}")
        if not self.request_timeout_s > 0:
            raise UserError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        if self.default_max_tokens < 1:
            raise UserError(f"default_max_tokens must be at least 1, got {self.default_max_tokens}")


class ApiError(Exception):
    """An HTTP error answered as OpenAI's JSON error object; the message is one line."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(" ".join(message.split()))
        self.status = status
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": None, "code": self.status}}


# ---- request parsing: the body of one call -> what the engine runs and how the answer is shaped ----


@dataclass(frozen=True)
class Call:
    chat: bool
    request: GenerationRequest
    stream: bool
    include_usage: bool


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _optional(body: dict, key: str, kind: type | tuple, what: str):
    value = body.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and bool not in _tuple(kind)):
        raise _bad(f"'{key}' must be {what}, got {json.dumps(value)[:40]}")
    return value


def _tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _check_greedy(body: dict, chat: bool) -> None:
    """Refuse what a greedy, single-choice decoder cannot honour, instead of answering something else."""
    temperature = _optional(body, "temperature", (int, float), "a number")
    if temperature is not None and (not math.isfinite(temperature) or temperature != 0):
        raise _bad(f"temperature {temperature} is not supported: this server decodes greedily (send 0 or omit it)")
    top_p = _optional(body, "top_p", (int, float), "a number")
    if top_p is not None and top_p != 1:
        raise _bad(f"top_p {top_p} is not supported: this server decodes greedily (send 1 or omit it)")
    for key in ("n", "best_of"):
        count = _optional(body, key, int, "an integer")
        if count is not None and count != 1:
            raise _bad(f"{key} {count} is not supported: this server returns one greedy choice per request")
    if chat:
        if _optional(body, "logprobs", bool, "true or false") or body.get("top_logprobs") is not None:
            raise _bad("logprobs are not supported by this server")
    elif body.get("logprobs") is not None:
        raise _bad("logprobs are not supported by this server")
    if _optional(body, "echo", bool, "true or false"):
        raise _bad("echo is not supported by this server")
    for key, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("repetition_penalty", 1)):
        value = _optional(body, key, (int, float), "a number")
        if value is not None and value != neutral:
            raise _bad(f"{key} {value} is not supported: this server decodes greedily without penalties")
    for key in ("stop", "logit_bias", "tools", "suffix"):
        if body.get(key):
            raise _bad(f"'{key}' is not supported by this server")
    response_format = body.get("response_format")
    if response_format and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise _bad("response_format other than text is not supported by this server")


def _token_budget(body: dict, prompt_tokens: int, engine: GenerationEngine, default: int) -> tuple[int, bool]:
    """max_tokens (or chat's max_completion_tokens) within the context, and ignore_eos (vLLM's extensions)."""
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _optional(body, key, int, "a positive integer")
    room = engine.max_context - prompt_tokens
    if max_tokens is not None and max_tokens < 1:
        raise _bad(f"'{key}' must be a positive integer, got {max_tokens}")
    if room < 1:
        raise _bad(f"the prompt ({prompt_tokens} tokens) leaves no room in the model's context of "
                   f"{engine.max_context} tokens")
    if max_tokens is not None and max_tokens > room:
        raise _bad(f"prompt ({prompt_tokens} tokens) + {key} ({max_tokens}) is over the model's context of "
                   f"{engine.max_context} tokens")
    if max_tokens is None:
        max_tokens = min(default, room)
    ignore_eos = bool(_optional(body, "ignore_eos", bool, "true or false"))
    min_tokens = _optional(body, "min_tokens", int, "an integer")
    if min_tokens is not None and min_tokens == max_tokens:
        ignore_eos = True
    elif min_tokens not in (None, 0):
        raise _bad(f"min_tokens {min_tokens} is not supported: only 0 or min_tokens == max_tokens ({max_tokens}, "
                   "the same as ignore_eos)")
    return max_tokens, ignore_eos


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = bool(_optional(body, "stream", bool, "true or false"))
    options = _optional(body, "stream_options", dict, "an object")
    include_usage = bool(options and _optional(options, "include_usage", bool, "true or false"))
    return stream, include_usage


def _prompt_ids(prompt, engine: GenerationEngine) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        if not prompt:
            raise _bad("'prompt' is empty")
        ids = engine.encode(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise _bad("a list of several prompts is not supported: send one prompt per request")
    else:
        raise _bad("'prompt' must be a non-empty string or a non-empty list of token ids")
    if any(t < 0 for t in ids):
        raise _bad("token ids in 'prompt' must not be negative")
    if not ids:
        raise _bad("'prompt' encodes to no tokens")
    return ids


def parse_completion(body: dict, engine: GenerationEngine, settings: ServerSettings) -> Call:
    """The body of POST /v1/completions -> the engine request; ApiError(400) with one line when it is malformed."""
    if "prompt" not in body:
        raise _bad("'prompt' is required")
    _check_greedy(body, chat=False)
    _optional(body, "model", str, "a string")
    ids = _prompt_ids(body["prompt"], engine)
    max_tokens, ignore_eos = _token_budget(body, len(ids), engine, settings.default_max_tokens)
    return Call(False, GenerationRequest(tuple(ids), max_tokens, ignore_eos), *_stream_flags(body))


def _message_content(content, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise _bad(f"messages[{index}].content must be a string or a list of text parts")


def parse_chat(body: dict, engine: GenerationEngine, settings: ServerSettings) -> Call:
    """The body of POST /v1/chat/completions -> the engine request (the engine's chat template makes the prompt)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {role, content} objects")
    _check_greedy(body, chat=True)
    _optional(body, "model", str, "a string")
    plain = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise _bad(f"messages[{index}] must be an object with a string 'role' and a 'content'")
        plain.append({"role": message["role"], "content": _message_content(message["content"], index)})
    try:
        ids = engine.encode(engine.chat_prompt(plain))
    except (ValueError, KeyError, TypeError) as error:
        raise _bad(f"the model's chat template refused these messages: {error}") from error
    if not ids:
        raise _bad("the messages encode to no tokens")
    max_tokens, ignore_eos = _token_budget(body, len(ids), engine, settings.default_max_tokens)
    return Call(True, GenerationRequest(tuple(ids), max_tokens, ignore_eos), *_stream_flags(body))


# ---- the scheduler: the one thread that drives the engine ----


@dataclass(frozen=True)
class Failure:
    """Put in a request's event queue instead of a token: the request ended with this error."""

    error: ApiError


class Job:
    """One accepted request as the scheduler sees it; `events` receives its TokenEvents, or a Failure."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.events: queue.SimpleQueue[TokenEvent | Failure] = queue.SimpleQueue()
        self.sequence_id: int | None = None


class Scheduler:
    """Bounded waiting queue + continuous batching: admits between steps while the engine has room, steps while
    anything is active, routes tokens to their jobs. Only its thread (`run`) calls the engine's add/step/cancel."""

    def __init__(self, engine: GenerationEngine, max_queue: int):
        self._engine = engine
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._admitted = 0  # jobs taken from the queue and not yet finished: the engine's active count, kept here
        self._running: dict[int, Job] = {}  # sequence id -> job; the scheduler thread's own
        self._cancels: list[Job] = []
        self._stopping = False
        self._closing = False

    def counts(self) -> tuple[int, int]:
        """(active, waiting): sequences admitted and not finished, requests queued for a slot."""
        with self._cond:
            return self._admitted, len(self._waiting)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise ApiError(503, "server is stopping", "unavailable")
            free_slots = max(0, self._engine.max_batch_size - self._admitted)
            if len(self._waiting) >= self._max_queue + free_slots:
                raise ApiError(429, f"server overloaded: queue full ({len(self._waiting)} waiting); retry later",
                               "overloaded", {"Retry-After": str(_RETRY_AFTER_S)})
            self._waiting.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job, queued or running (harmless once it finished)."""
        with self._cond:
            self._cancels.append(job)
            self._cond.notify_all()

    def begin_stop(self) -> None:
        with self._cond:
            self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._waiting or self._admitted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Make run() return after its current step; what is still queued or running then gets a 503."""
        with self._cond:
            self._stopping = self._closing = True
            self._cond.notify_all()

    def run(self) -> None:
        """The scheduler thread. Should it die of a bug, the server stops accepting (503) instead of hanging."""
        try:
            self._loop()
            self._abort_all(ApiError(503, "server stopped before the request finished", "unavailable"))
        except Exception as error:
            log.exception("the scheduler failed; the server no longer accepts requests")
            self.close()
            self._abort_all(ApiError(500, f"the scheduler failed: {type(error).__name__}: {error}", "server_error"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._cancels or self._running or self._waiting and self._has_room()):
                    self._cond.wait()
                if self._closing:
                    break
                cancels, self._cancels = self._cancels, []
                for job in cancels:
                    if job in self._waiting:
                        self._waiting.remove(job)
                admits = []
                while self._waiting and self._has_room(len(admits)):
                    admits.append(self._waiting.popleft())
                    self._admitted += 1
            for job in cancels:
                if job.sequence_id in self._running and self._running[job.sequence_id] is job:
                    self._cancel_quietly(job.sequence_id)
                    self._finish(job)
            for job in admits:
                self._admit(job)
            if self._running:
                self._step()

    def _has_room(self, admitting: int = 0) -> bool:
        return self._engine.active + admitting < self._engine.max_batch_size

    def _admit(self, job: Job) -> None:
        try:
            job.sequence_id = self._engine.add(job.request)
        except ValueError as error:  # the engine found the request invalid (say, a token id outside its vocabulary)
            self._fail(job, ApiError(400, f"the engine refused the request: {error}"))
            return
        except Exception as error:  # the engine failed on this one request; the others go on
            log.exception("engine.add failed")
            self._fail(job, ApiError(500, f"the engine failed to admit the request: {error}", "server_error"))
            return
        self._running[job.sequence_id] = job

    def _step(self) -> None:
        try:
            events = self._engine.step()
        except Exception as error:
            log.exception("engine.step failed; failing the %d requests it was running", len(self._running))
            failure = ApiError(500, f"generation failed: {type(error).__name__}: {error}", "server_error")
            for sequence_id, job in list(self._running.items()):
                self._cancel_quietly(sequence_id)
                self._fail(job, failure)
            return
        for event in events:
            job = self._running.get(event.sequence_id)
            if job is None:  # cancelled while the step ran
                continue
            if event.finished and event.finish_reason not in ("stop", "length"):
                self._fail(job, ApiError(500, f"the engine ended the sequence ({event.finish_reason})", "server_error"))
                continue
            job.events.put(event)
            if event.finished:
                self._finish(job)

    def _cancel_quietly(self, sequence_id: int) -> None:
        try:
            self._engine.cancel(sequence_id)
        except Exception:
            log.exception("engine.cancel(%d) failed", sequence_id)

    def _fail(self, job: Job, error: ApiError) -> None:
        job.events.put(Failure(error))
        self._finish(job)

    def _finish(self, job: Job) -> None:
        if job.sequence_id is not None:
            self._running.pop(job.sequence_id, None)
        with self._cond:
            self._admitted -= 1
            self._cond.notify_all()

    def _abort_all(self, error: ApiError) -> None:
        for sequence_id, job in list(self._running.items()):
            self._cancel_quietly(sequence_id)
            self._fail(job, error)
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            job.events.put(Failure(error))


# ---- HTTP ----


class _ClientGone(Exception):
    pass


def _new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; streams use chunked transfer encoding
    server_version = "advisor-llm"
    timeout = _SOCKET_TIMEOUT_S
    app: OpenAIServer  # set on the subclass OpenAIServer.start makes

    def setup(self):
        super().setup()
        with self.app._lock:
            self.app._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.app._lock:
                self.app._connections.discard(self.connection)

    def log_message(self, format, *args):
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def do_DELETE(self):
        self._route("DELETE")

    def do_PATCH(self):
        self._route("PATCH")

    def do_OPTIONS(self):
        self._route("OPTIONS")

    def do_HEAD(self):
        self.send_response(405)
        self.send_header("Allow", "GET, POST")
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- routing and replies --

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        routes = {"/health": ("GET", self._health), "/v1/models": ("GET", self._models),
                  f"/v1/models/{self.app.engine.model_name}": ("GET", self._model),
                  "/v1/completions": ("POST", lambda: self._generate(parse_completion)),
                  "/v1/chat/completions": ("POST", lambda: self._generate(parse_chat))}
        self._headers_sent = False
        try:
            if path not in routes:
                raise ApiError(404, f"no such endpoint: {method} {path}", "not_found_error")
            allowed, answer = routes[path]
            if method != allowed:
                raise ApiError(405, f"{method} is not allowed on {path}; use {allowed}", "method_not_allowed",
                               {"Allow": allowed})
            answer()
        except ApiError as error:
            self._reply_error(error)
        except _ClientGone:
            self.close_connection = True
        except Exception as error:  # a bug here must not take the server down or leave the client hanging
            log.exception("request %s %s failed", method, path)
            if self._headers_sent:
                self.close_connection = True
            else:
                self._reply_error(ApiError(500, f"internal error: {type(error).__name__}: {error}", "server_error"))

    def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._headers_sent = True
        self.wfile.write(data)

    def _reply_error(self, error: ApiError) -> None:
        self.close_connection = True  # the body may be unread: do not parse it as the next request
        try:
            self._reply(error.status, error.body(), {**error.headers, "Connection": "close"})
        except OSError:
            pass

    def _health(self) -> None:
        active, waiting = self.app.scheduler.counts()
        stopping = self.app.scheduler.stopping
        self._reply(503 if stopping else 200, {"status": "stopping" if stopping else "ok", "active": active,
                                               "waiting": waiting})

    def _model_card(self) -> dict:
        return {"id": self.app.engine.model_name, "object": "model", "created": self.app.started_at,
                "owned_by": "advisor"}

    def _models(self) -> None:
        self._reply(200, {"object": "list", "data": [self._model_card()]})

    def _model(self) -> None:
        self._reply(200, self._model_card())

    def _read_json(self) -> dict:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "send the body with a Content-Length (chunked request bodies are not supported)")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise ApiError(411, "a JSON body with a Content-Length is required")
        try:
            length = int(length_text)
        except ValueError:
            raise _bad(f"Content-Length is not a number: {length_text[:40]!r}") from None
        if length < 0:
            raise _bad(f"Content-Length is negative: {length}")
        if length > MAX_BODY_BYTES:
            raise ApiError(413, f"request body of {length} bytes is over the limit of {MAX_BODY_BYTES} bytes (8 MiB)")
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise _ClientGone()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as error:
            raise _bad(f"the body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise _bad(f"the body must be a JSON object, got {type(body).__name__}")
        return body

    # -- generation --

    def _generate(self, parse) -> None:
        deadline = time.monotonic() + self.app.settings.request_timeout_s
        call = parse(self._read_json(), self.app.engine, self.app.settings)
        job = Job(call.request)
        decoder = self.app.engine.new_decoder()
        self.app.scheduler.submit(job)
        self.app._count_in_flight(+1)
        self._client_checked_at = time.monotonic()
        finished = False
        try:
            response = _StreamedResponse(self, call) if call.stream else _WholeResponse(self, call)
            while not finished:
                event = self._next_event(job, deadline)
                if isinstance(event, Failure):
                    response.fail(event.error)
                    return
                finished = event.finished
                response.add(decoder.add(event.token_id), event)
        except OSError:  # a write to a client that went away (broken pipe, reset, timed out)
            raise _ClientGone() from None
        finally:
            if not finished:  # gone, timed out or failed: make sure the engine no longer runs it
                self.app.scheduler.cancel(job)
            self.app._count_in_flight(-1)

    def _next_event(self, job: Job, deadline: float) -> TokenEvent | Failure:
        """The job's next event; checks every _CLIENT_CHECK_S, busy or idle, that the client is still there."""
        while True:
            now = time.monotonic()
            if now - self._client_checked_at >= _CLIENT_CHECK_S:
                self._client_checked_at = now
                if self._client_gone():
                    raise _ClientGone()
            if now >= deadline:
                return Failure(ApiError(504, f"request took longer than {self.app.settings.request_timeout_s:g} s "
                                        "and was cancelled", "timeout"))
            try:
                return job.events.get(timeout=min(_CLIENT_CHECK_S, deadline - now))
            except queue.Empty:
                pass

    def _client_gone(self) -> bool:
        """True when the client closed its end: the socket reads as end-of-file (or was reset)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class _WholeResponse:
    """stream false: collect the text, answer one JSON with usage."""

    def __init__(self, handler: _Handler, call: Call):
        self.handler, self.call = handler, call
        self.pieces: list[str] = []
        self.completion_tokens = 0

    def add(self, text: str, event: TokenEvent) -> None:
        self.pieces.append(text)
        self.completion_tokens += 1
        if not event.finished:
            return
        text = "".join(self.pieces)
        if self.call.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": event.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": event.finish_reason}
        self.handler._reply(200, {
            "id": _new_id(self.call.chat), "object": "chat.completion" if self.call.chat else "text_completion",
            "created": int(time.time()), "model": self.handler.app.engine.model_name, "choices": [choice],
            "usage": _usage(len(self.call.request.prompt_ids), self.completion_tokens)})

    def fail(self, error: ApiError) -> None:
        raise error


class _StreamedResponse:
    """stream true: server-sent events over chunked transfer encoding, one chunk per token that adds text (text a
    token leaves incomplete is carried into the next chunk), then the finish_reason chunk, usage if asked, [DONE].
    The headers go out with the first token, so a request that fails before it gets a plain JSON error."""

    def __init__(self, handler: _Handler, call: Call):
        self.handler, self.call = handler, call
        self.id = _new_id(call.chat)
        self.created = int(time.time())
        self.started = False
        self.completion_tokens = 0

    def add(self, text: str, event: TokenEvent) -> None:
        if not self.started:
            self._start()
        self.completion_tokens += 1
        if text:
            self._chunk({"content": text} if self.call.chat else {"text": text}, None)
        if event.finished:
            self._chunk({} if self.call.chat else {"text": ""}, event.finish_reason)
            if self.call.include_usage:
                usage = _usage(len(self.call.request.prompt_ids), self.completion_tokens)
                self._event({**self._envelope(), "choices": [], "usage": usage})
            self._end()

    def fail(self, error: ApiError) -> None:
        if not self.started:
            raise error
        self._event(error.body())
        self._end()

    def _start(self) -> None:
        handler = self.handler
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler._headers_sent = True
        self.started = True
        if self.call.chat:
            self._chunk({"role": "assistant", "content": ""}, None)

    def _envelope(self) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk" if self.call.chat else "text_completion",
                "created": self.created, "model": self.handler.app.engine.model_name}

    def _chunk(self, payload: dict, finish_reason: str | None) -> None:
        choice = {"index": 0, "delta": payload} if self.call.chat else {"index": 0, **payload}
        choice.update(logprobs=None, finish_reason=finish_reason)
        chunk = {**self._envelope(), "choices": [choice]}
        if self.call.include_usage:
            chunk["usage"] = None
        self._event(chunk)

    def _event(self, data: dict) -> None:
        self._write(b"data: " + json.dumps(data).encode() + b"\n\n")

    def _end(self) -> None:
        self._write(b"data: [DONE]\n\n")
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()

    def _write(self, data: bytes) -> None:
        self.handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.handler.wfile.flush()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: bursts of clients connect at once


class OpenAIServer:
    """OpenAI-compatible HTTP server over one engine. `start()` binds and starts serving; `stop()` drains.
    The engine stays the caller's: stop() does not close it."""

    def __init__(self, engine: GenerationEngine, settings: ServerSettings = ServerSettings()):
        self.engine = engine
        self.settings = settings
        self.scheduler = Scheduler(engine, settings.max_queue)
        self.started_at = int(time.time())
        self._connections: set[socket.socket] = set()
        self._in_flight = 0  # generation requests whose thread has not written its last byte
        self._lock = threading.Lock()  # guards _connections and _in_flight
        self._httpd: _HTTPServer | None = None
        self._address: tuple[str, int] | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> OpenAIServer:
        handler = type("Handler", (_Handler,), {"app": self})
        try:
            self._httpd = _HTTPServer((self.settings.host, self.settings.port), handler)
        except OSError as error:
            raise UserError(f"cannot listen on {self.settings.host}:{self.settings.port}: "
                            f"{error.strerror or error}") from None
        self._threads = [threading.Thread(target=self.scheduler.run, name="llm-scheduler", daemon=True),
                         threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                          name="llm-http", daemon=True)]
        for thread in self._threads:
            thread.start()
        self._address = self._httpd.server_address[:2]
        return self

    @property
    def url(self) -> str:
        """http://host:port, with the port actually bound (settings.port 0 picks a free one)."""
        if self._address is None:
            raise RuntimeError("the server was never started")
        host, port = self._address
        return f"http://{host}:{port}"

    def stop(self, drain_s: float = 5) -> None:
        """Stop accepting (new requests get 503), let requests in flight finish for up to drain_s, cancel the rest
        (they get a 503, or an SSE error event), then close the listener and every connection."""
        if self._httpd is None:
            return
        self.scheduler.begin_stop()
        self.scheduler.wait_idle(drain_s)
        self.scheduler.close()
        scheduler_thread, http_thread = self._threads
        scheduler_thread.join(_SCHEDULER_JOIN_S)
        if scheduler_thread.is_alive():
            log.warning("the engine's step did not return within %g s of stop()", _SCHEDULER_JOIN_S)
        self._wait_for_handlers(_HANDLERS_FINISH_S)
        self._httpd.shutdown()
        self._httpd.server_close()
        http_thread.join(_SCHEDULER_JOIN_S)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:  # idle keep-alive connections: wake their threads
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd = None

    def _count_in_flight(self, change: int) -> None:
        with self._lock:
            self._in_flight += change

    def _wait_for_handlers(self, timeout_s: float) -> None:
        """Give request threads holding a final event (a token or a 503) time to write it."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(engine: GenerationEngine, settings: ServerSettings) -> None:
    """Serve until Ctrl-C (or SIGTERM), then stop cleanly: requests in flight get 5 s to finish, a second Ctrl-C
    cancels them at once. The caller closes the engine afterwards."""
    stop_requested = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop_requested.set()) if in_main_thread else None
    server = OpenAIServer(engine, settings).start()
    try:
        print(f"serving {engine.model_name} ({engine.name} {engine.version}), OpenAI-compatible API at "
              f"{server.url}/v1 - Ctrl-C stops", flush=True)
        try:
            while not stop_requested.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print("stopping: requests in flight get up to 5 s to finish", flush=True)
        try:
            server.stop(drain_s=5)
        except KeyboardInterrupt:
            server.stop(drain_s=0)
    finally:
        server.stop(drain_s=0)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
