"""The OpenAI-compatible server over real HTTP on 127.0.0.1, driven by a scripted engine with known output and timing.

Every wait is bounded: httpx timeouts on each call, `wait_until` for conditions, futures with result timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from advisor.llm.server import OpenAIServer, ServerSettings
from llm_scripted_engine import ScriptedEngine

pytestmark = pytest.mark.timeout(60)

HTTP_TIMEOUT_S = 10.0


@contextmanager
def serving(engine: ScriptedEngine, **settings):
    server = OpenAIServer(engine, ServerSettings(port=0, **settings)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
            yield server, client
    finally:
        server.stop(drain_s=0)


def wait_until(condition, timeout_s: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def read_events(response: httpx.Response) -> list:
    """The SSE data payloads of a streamed response: parsed JSON objects, and the literal "[DONE]"."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


def expected_text(engine: ScriptedEngine, prompt_ids, max_tokens: int) -> tuple[str, list[int]]:
    tokens = engine.continuation(prompt_ids, max_tokens)
    return engine.decode(tokens), tokens


# ---- response formats ----


def test_streaming_completion_joins_to_the_text_and_reports_usage():
    engine = ScriptedEngine(step_ms=2)
    prompt = [8]  # its continuation starts "un@@ believ@@ able": two tokens whose text is incomplete
    text, tokens = expected_text(engine, prompt, 12)
    assert text.startswith("unbelievable ")
    with serving(engine) as (_, client):
        body = {"model": engine.model_name, "prompt": prompt, "max_tokens": 12, "stream": True,
                "stream_options": {"include_usage": True}}
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_events(response)
    assert events[-1] == "[DONE]"
    *text_chunks, final, usage = events[:-1]
    assert len(text_chunks) == len(tokens) - 2  # the incomplete pieces were carried, not sent as empty chunks
    assert all(chunk["choices"][0]["text"] and chunk["choices"][0]["finish_reason"] is None for chunk in text_chunks)
    assert text_chunks[0]["choices"][0]["text"] == "unbelievable"
    assert "".join(chunk["choices"][0]["text"] for chunk in text_chunks) == text
    assert final["choices"][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 1, "completion_tokens": 12,
                                                         "total_tokens": 13}
    for chunk in events[:-1]:
        assert chunk["id"] == events[0]["id"] and chunk["id"].startswith("cmpl-")
        assert chunk["object"] == "text_completion" and chunk["model"] == engine.model_name
        assert isinstance(chunk["created"], int)
    assert all(chunk["usage"] is None for chunk in text_chunks + [final])


def test_streaming_chat_sends_role_then_content_deltas():
    engine = ScriptedEngine(step_ms=2)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the lazy dog"}]
    prompt_ids = engine.encode(engine.chat_prompt(messages))
    text, _ = expected_text(engine, prompt_ids, 8)
    with serving(engine) as (_, client):
        with client.stream("POST", "/v1/chat/completions",
                           json={"messages": messages, "max_tokens": 8, "stream": True}) as response:
            assert response.status_code == 200
            events = read_events(response)
    assert events[-1] == "[DONE]"
    first, *content, final = events[:-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in content) == text
    assert final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-") for c in events[:-1])
    assert all("usage" not in c for c in events[:-1])  # include_usage not asked for


def test_whole_completion_and_chat_with_end_of_sequence():
    engine = ScriptedEngine(step_ms=2, eos_after=5)
    with serving(engine) as (_, client):
        response = client.post("/v1/completions", json={"prompt": "the quick brown", "max_tokens": 10})
        assert response.status_code == 200
        reply = response.json()
        prompt_ids = engine.encode("the quick brown")
        assert reply["id"].startswith("cmpl-") and reply["object"] == "text_completion"
        assert reply["model"] == engine.model_name
        assert reply["choices"] == [{"index": 0, "text": expected_text(engine, prompt_ids, 10)[0], "logprobs": None,
                                     "finish_reason": "stop"}]
        assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}  # 5 words + EOS

        ignoring = client.post("/v1/completions", json={"prompt": "the quick brown", "max_tokens": 10,
                                                        "min_tokens": 10}).json()  # vLLM: min == max ignores EOS
        assert ignoring["choices"][0]["finish_reason"] == "length" and ignoring["usage"]["completion_tokens"] == 10

        messages = [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "fox"}]}]
        chat = client.post("/v1/chat/completions", json={"messages": messages, "max_completion_tokens": 4}).json()
        chat_ids = engine.encode(engine.chat_prompt([{"role": "user", "content": "hello fox"}]))
        assert chat["object"] == "chat.completion" and chat["id"].startswith("chatcmpl-")
        assert chat["choices"][0]["message"] == {"role": "assistant", "content": expected_text(engine, chat_ids, 4)[0]}
        assert chat["choices"][0]["finish_reason"] == "length"
        assert chat["usage"] == {"prompt_tokens": len(chat_ids), "completion_tokens": 4,
                                 "total_tokens": len(chat_ids) + 4}

        default = client.post("/v1/completions", json={"prompt": "fox", "ignore_eos": True}).json()
        assert default["usage"]["completion_tokens"] == ServerSettings().default_max_tokens


def test_models_and_health():
    engine = ScriptedEngine()
    with serving(engine) as (_, client):
        models = client.get("/v1/models").json()
        assert models["object"] == "list"
        assert [(m["id"], m["object"]) for m in models["data"]] == [(engine.model_name, "model")]
        assert client.get(f"/v1/models/{engine.model_name}").json()["id"] == engine.model_name
        health = client.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok", "active": 0, "waiting": 0}


# ---- batching and load ----


def test_concurrent_requests_are_served_in_the_same_steps():
    engine = ScriptedEngine(max_batch_size=4, step_ms=25)
    body = {"prompt": "a small model", "max_tokens": 12}
    with serving(engine) as (_, client):
        started = time.perf_counter()
        assert client.post("/v1/completions", json=body).status_code == 200
        one_request_s = time.perf_counter() - started
        assert max(engine.step_batch_sizes) == 1
        steps_before = len(engine.step_batch_sizes)

        barrier = threading.Barrier(4)

        def send(_):
            barrier.wait(timeout=5)
            return client.post("/v1/completions", json=body)

        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            replies = [future.result(timeout=HTTP_TIMEOUT_S) for future in [pool.submit(send, i) for i in range(4)]]
        four_requests_s = time.perf_counter() - started
    assert all(reply.status_code == 200 for reply in replies)
    expected = expected_text(engine, engine.encode(body["prompt"]), 12)[0]
    assert all(reply.json()["choices"][0]["text"] == expected for reply in replies)
    batch_sizes = engine.step_batch_sizes[steps_before:]
    assert max(batch_sizes) == 4
    assert len(batch_sizes) < 2 * 12  # one at a time would take 48 steps
    assert four_requests_s < 2 * one_request_s, (four_requests_s, one_request_s)  # serially it would be ~4x


def test_overloaded_server_answers_429_while_the_queue_drains():
    engine = ScriptedEngine(max_batch_size=1, step_ms=40)
    body = {"prompt": "the fox", "max_tokens": 5}
    with serving(engine, max_queue=2) as (_, client), ThreadPoolExecutor(3) as pool:
        running = pool.submit(client.post, "/v1/completions", json=body)
        wait_until(lambda: client.get("/health").json()["active"] == 1, what="the first request to run")
        queued = [pool.submit(client.post, "/v1/completions", json=body) for _ in range(2)]
        wait_until(lambda: client.get("/health").json()["waiting"] == 2, what="two requests to queue")

        started = time.perf_counter()
        rejected = client.post("/v1/completions", json=body)
        assert time.perf_counter() - started < 1.0  # at once, not after the queue moved
        assert rejected.status_code == 429
        assert rejected.headers["retry-after"] == "1"
        error = rejected.json()["error"]
        assert error["type"] == "overloaded" and error["code"] == 429
        assert "queue full (2 waiting)" in error["message"]

        replies = [future.result(timeout=HTTP_TIMEOUT_S) for future in [running, *queued]]
        assert [reply.status_code for reply in replies] == [200, 200, 200]
        assert all(reply.json()["usage"]["completion_tokens"] == 5 for reply in replies)
        assert client.get("/health").json() == {"status": "ok", "active": 0, "waiting": 0}
        assert max(engine.step_batch_sizes) == 1


# ---- bad requests ----

MALFORMED = [
    ("/v1/completions", b"{not json", "not valid JSON"),
    ("/v1/completions", b"[1, 2]", "must be a JSON object"),
    ("/v1/completions", b"[" * 100_000, "not valid JSON"),
    ("/v1/completions", {"prompt": "the", "temperature": 0.7}, "decodes greedily"),
    ("/v1/completions", {"prompt": "the", "max_tokens": -1}, "positive integer"),
    ("/v1/completions", {"prompt": "the", "max_tokens": "10"}, "positive integer"),
    ("/v1/completions", {"prompt": "the", "max_tokens": True}, "positive integer"),
    ("/v1/completions", {"max_tokens": 4}, "'prompt' is required"),
    ("/v1/completions", {"prompt": ""}, "'prompt' is empty"),
    ("/v1/completions", {"prompt": []}, "non-empty"),
    ("/v1/completions", {"prompt": [1, "a"]}, "non-empty"),
    ("/v1/completions", {"prompt": ["the", "fox"]}, "one prompt per request"),
    ("/v1/completions", {"prompt": "the", "max_tokens": 300}, "over the model's context of 256"),
    ("/v1/completions", {"prompt": [2] * 256}, "leaves no room"),
    ("/v1/completions", {"prompt": [99999], "max_tokens": 2}, "outside the vocabulary"),
    ("/v1/completions", {"prompt": "the", "n": 2}, "one greedy choice"),
    ("/v1/completions", {"prompt": "the", "best_of": 3}, "one greedy choice"),
    ("/v1/completions", {"prompt": "the", "logprobs": 1}, "logprobs"),
    ("/v1/completions", {"prompt": "the", "echo": True}, "echo"),
    ("/v1/completions", {"prompt": "the", "top_p": 0.5}, "decodes greedily"),
    ("/v1/completions", {"prompt": "the", "stop": ["dog"]}, "'stop' is not supported"),
    ("/v1/completions", {"prompt": "the", "max_tokens": 10, "min_tokens": 3}, "min_tokens"),
    ("/v1/completions", {"prompt": "the", "stream": "yes"}, "'stream' must be true or false"),
    ("/v1/chat/completions", {"messages": "hi"}, "'messages' must be a non-empty list"),
    ("/v1/chat/completions", {"messages": []}, "'messages' must be a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages[0]"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": 1}, "greedily"),
]


@pytest.fixture(scope="module")
def shared_server():
    engine = ScriptedEngine(step_ms=1)
    with serving(engine) as (server, client):
        yield engine, client


@pytest.mark.parametrize("path, body, fragment", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_request_is_a_400_with_one_line(shared_server, path, body, fragment):
    engine, client = shared_server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert fragment in error["message"] and "\n" not in error["message"]
    assert client.get("/health").json() == {"status": "ok", "active": 0, "waiting": 0}


def test_unknown_path_wrong_method_and_huge_body(shared_server):
    engine, client = shared_server
    missing = client.post("/v1/embeddings", json={"input": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = client.get("/v1/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert "GET is not allowed" in wrong.json()["error"]["message"]
    assert client.post("/health").status_code == 405

    host, port = httpx.URL(str(client.base_url)).host, httpx.URL(str(client.base_url)).port
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 9000000\r\n\r\n")
        reply = b""
        while chunk := raw.recv(4096):  # the server closes after an error reply
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "8 MiB" in reply

    extra = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 2, "user": "u", "seed": 7,
                                                 "metadata": {"a": [1]}, "temperature": 0, "top_p": 1, "n": 1})
    assert extra.status_code == 200 and extra.json()["usage"]["completion_tokens"] == 2


# ---- failures, cancellation, stopping ----


def test_engine_exception_before_streaming_is_a_500_and_the_next_request_succeeds():
    engine = ScriptedEngine(step_ms=2, fail_on_step=1)
    with serving(engine) as (_, client):
        failed = client.post("/v1/completions", json={"prompt": "the fox", "max_tokens": 4})
        assert failed.status_code == 500
        error = failed.json()["error"]
        assert error["type"] == "server_error" and "scripted failure in step 1" in error["message"]
        assert engine.active == 0
        ok = client.post("/v1/completions", json={"prompt": "the fox", "max_tokens": 4})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


def test_engine_exception_mid_stream_is_an_sse_error_event():
    engine = ScriptedEngine(step_ms=2, fail_on_step=3)
    with serving(engine) as (_, client):
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "the quick", "max_tokens": 8, "stream": True}) as response:
            assert response.status_code == 200
            events = read_events(response)
        assert [e["choices"][0]["text"] for e in events[:2]] == ["over", " lazy"]  # the two steps that worked
        assert events[2]["error"]["code"] == 500 and "scripted failure" in events[2]["error"]["message"]
        assert events[3:] == ["[DONE]"]
        assert engine.active == 0
        assert client.post("/v1/completions", json={"prompt": "the fox", "max_tokens": 4}).status_code == 200


def test_client_that_disconnects_gets_its_sequence_cancelled():
    engine = ScriptedEngine(step_ms=10)
    with serving(engine) as (_, client):
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "the fox", "max_tokens": 200, "stream": True}) as response:
            lines = response.iter_lines()
            received = [line for line, _ in zip(lines, range(6)) if line]  # three chunks, then hang up
        assert len(received) == 3
        wait_until(lambda: engine.active == 0, timeout_s=3, what="the streamed sequence to be cancelled")
        assert len(engine.cancelled_ids) == 1

        with pytest.raises(httpx.ReadTimeout):  # a whole-response client that gives up
            client.post("/v1/completions", json={"prompt": "the fox", "max_tokens": 200}, timeout=0.3)
        wait_until(lambda: engine.active == 0, timeout_s=3, what="the whole-response sequence to be cancelled")
        assert len(engine.cancelled_ids) == 2
        assert len(engine.step_batch_sizes) < 200  # neither ran to its end
        assert client.get("/health").json() == {"status": "ok", "active": 0, "waiting": 0}


def test_request_over_its_timeout_is_a_504_and_cancelled():
    engine = ScriptedEngine(step_ms=10)
    with serving(engine, request_timeout_s=0.3) as (_, client):
        response = client.post("/v1/completions", json={"prompt": "the fox", "max_tokens": 200})
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"
        wait_until(lambda: engine.active == 0, timeout_s=3, what="the timed-out sequence to be cancelled")


def test_stop_drains_in_flight_requests_and_answers_503_meanwhile():
    engine = ScriptedEngine(step_ms=20)
    server = OpenAIServer(engine, ServerSettings(port=0)).start()
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client, ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(client.post, "/v1/completions", json={"prompt": "the fox", "max_tokens": 25})
        wait_until(lambda: engine.active == 1, what="the request to run")
        stopping = pool.submit(server.stop, 5)
        wait_until(lambda: client.get("/health").status_code == 503, what="/health to say stopping")
        refused = client.post("/v1/completions", json={"prompt": "the fox", "max_tokens": 2})
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "unavailable"
        finished = in_flight.result(timeout=HTTP_TIMEOUT_S)
        assert finished.status_code == 200 and finished.json()["usage"]["completion_tokens"] == 25
        stopping.result(timeout=HTTP_TIMEOUT_S)
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health", timeout=2)


def test_stop_cancels_what_outlives_the_drain():
    engine = ScriptedEngine(step_ms=10)
    server = OpenAIServer(engine, ServerSettings(port=0)).start()
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "the fox", "max_tokens": 200, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            started = time.perf_counter()
            server.stop(drain_s=0.2)
            assert time.perf_counter() - started < 3
            rest = [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]" for line in lines if line]
    assert rest[-1] == "[DONE]"
    assert rest[-2]["error"]["code"] == 503
    assert engine.active == 0


def test_serve_forever_stops_cleanly_on_ctrl_c(tmp_path):
    script = ("import sys; sys.path.insert(0, sys.argv[1]);"
              "from llm_scripted_engine import ScriptedEngine;"
              "from advisor.llm.server import ServerSettings, serve_forever;"
              "serve_forever(ScriptedEngine(), ServerSettings(port=0))")
    # SIGINT restored to its default in the child: a test run started in the background of a shell without job
    # control inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    process = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first_line = []
        reader = threading.Thread(target=lambda: first_line.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=20)
        assert first_line and "http://127.0.0.1:" in first_line[0], first_line
        url = first_line[0].split("API at ")[1].split("/v1")[0]
        assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=5)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "stopping" in stdout
