"""A minimal OpenAI-compatible streaming server whose token timing is scripted exactly, for testing bench-serve.

Standard library only (http.server, one thread per connection, HTTP/1.1 keep-alive, chunked SSE). Request k
(0-based, in arrival order) gets its first token at arrival + ttft_s + ttft_jitter_s[k % len], then one chunk every
itl_s, each chunk `tokens_per_chunk` tokens, until max_tokens; every chunk is scheduled against the arrival time,
so sleeps never accumulate drift. Optionally every k-th request fails (HTTP 500 before streaming, or an SSE error
event after the first token), or stalls (no token for stall_s). The server records when each request arrived and
finished, and its body, so a test can check arrival processes, concurrency and lengths on the server's side.

Run alone for a manual check: python tests/scripted_openai_server.py [PORT]
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Script:
    ttft_s: float = 0.040
    itl_s: float = 0.010
    ttft_jitter_s: tuple[float, ...] = (0.0,)  # request k's TTFT gets ttft_jitter_s[k % len] added
    tokens_per_chunk: int = 1
    usage: bool = True  # send a usage event when the client asks (stream_options.include_usage)
    http_error_every: int = 0  # requests k with (k + 1) % n == 0 answer HTTP 500
    sse_error_every: int = 0  # ... send an SSE error event after their first token
    stall_every: int = 0  # ... send their first token only after stall_s
    stall_s: float = 2.0
    model: str = "scripted-model"

    def fails_http(self, k: int) -> bool:
        return self.http_error_every > 0 and (k + 1) % self.http_error_every == 0

    def fails_sse(self, k: int) -> bool:
        return not self.fails_http(k) and self.sse_error_every > 0 and (k + 1) % self.sse_error_every == 0

    def stalls(self, k: int) -> bool:
        return (not self.fails_http(k) and not self.fails_sse(k) and self.stall_every > 0
                and (k + 1) % self.stall_every == 0)


@dataclass
class Arrival:
    index: int
    path: str
    arrived_s: float  # time.perf_counter()
    body: dict
    finished_s: float | None = None


def prompt_words(body: dict) -> int:
    """The prompt length as this server counts it: ids in a list, else whitespace-separated words."""
    if "messages" in body:
        return sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    prompt = body.get("prompt", "")
    return len(prompt) if isinstance(prompt, list) else len(str(prompt).split())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small SSE writes leave at once (Nagle + delayed ACK would hold them ~40 ms)
    server: _Server

    def log_message(self, format, *args):  # quiet
        pass

    def _json(self, status: int, data: dict) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _chunk(self, data: dict | str) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        payload = f"data: {text}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.server.script.model, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        arrived = time.perf_counter()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        arrival = self.server.arrive(self.path, arrived, body)
        try:
            self._stream(arrival, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout, drain)
        finally:
            self.server.finish(arrival)

    def _stream(self, arrival: Arrival, body: dict) -> None:
        script, k = self.server.script, arrival.index
        if script.fails_http(k):
            self._json(500, {"error": {"message": f"scripted failure of request {k}", "type": "server_error"}})
            return
        chat = self.path.endswith("/chat/completions")
        tokens = int(body.get("max_tokens", 16))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        first = arrival.arrived_s + script.ttft_s + script.ttft_jitter_s[k % len(script.ttft_jitter_s)]
        if script.stalls(k):
            first += script.stall_s
        chunks = -(-tokens // script.tokens_per_chunk)
        if chat:
            self._chunk({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                                              "content": ""}}]})
        for c in range(chunks):
            time.sleep(max(0.0, first + c * script.itl_s - time.perf_counter()))
            n = min(script.tokens_per_chunk, tokens - c * script.tokens_per_chunk)
            text = "".join(f" t{c}.{i}" for i in range(n))
            choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            self._chunk({"object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice]})
            if c == 0 and script.fails_sse(k):
                self._chunk({"error": {"message": f"scripted SSE error of request {k}", "code": 500}})
                break
        if script.usage and (body.get("stream_options") or {}).get("include_usage"):
            self._chunk({"choices": [], "usage": {"prompt_tokens": prompt_words(body), "completion_tokens": tokens,
                                                  "total_tokens": prompt_words(body) + tokens}})
        self._chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of Poisson arrivals open many connections at once

    def __init__(self, script: Script, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.script = script
        self.arrivals: list[Arrival] = []
        self._lock = threading.Lock()

    def arrive(self, path: str, arrived: float, body: dict) -> Arrival:
        with self._lock:
            arrival = Arrival(len(self.arrivals), path, arrived, body)
            self.arrivals.append(arrival)
            return arrival

    def finish(self, arrival: Arrival) -> None:
        with self._lock:
            arrival.finished_s = time.perf_counter()


class ScriptedServer:
    """`with ScriptedServer(Script(...)) as server:` serves on 127.0.0.1 at server.url until the block ends."""

    def __init__(self, script: Script = Script()):
        self.script = script
        self._server = _Server(script)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def arrivals(self) -> list[Arrival]:
        """The requests so far, in arrival order (copies: safe to read while serving)."""
        with self._server._lock:
            return [Arrival(a.index, a.path, a.arrived_s, a.body, a.finished_s) for a in self._server.arrivals]

    def max_in_flight(self) -> int:
        """The most requests the server held at once (arrived, not yet finished)."""
        events = []
        for a in self.arrivals():
            events.append((a.arrived_s, 1))
            events.append((a.finished_s if a.finished_s is not None else float("inf"), -1))
        peak = level = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # a finish before an arrival at the same instant
            level += step
            peak = max(peak, level)
        return peak

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(JOIN_TIMEOUT_S)


if __name__ == "__main__":
    server = _Server(Script(), int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"serving on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
