"""Backends: tool (calculator/lookup), LM callable, config selection, and the OpenAI-compatible
HTTP backend against a local SSE server on 127.0.0.1 (success, auth header, key never leaked,
server errors, malformed JSON, truncated stream, connection refused)."""

import http.server
import json
import logging
import re
import socket
import threading

import pytest

from interaction_jax.background import (
    BackgroundRunner,
    LMBackend,
    OpenAIChatBackend,
    ToolBackend,
    make_backend,
    render_prompt,
)
from interaction_jax.config_lib import base_config

from .helpers import package, wait_for

KEY = "sk-test-S3CRET-do-not-leak"
PIECES = ["The ", "answer ", "is 42."]


def _stream(backend, pkg=None, cancel=None):
    return list(backend.stream(pkg or package(), cancel or threading.Event()))


def test_tool_backend_answers_in_chunks():
    b = ToolBackend(chunk_chars=4)
    assert _stream(b, package("What is 347 times 29?")) == ["1006", "3"]
    assert "".join(_stream(b, package("What's the weather in London?"))) == "rainy and 12 degrees"
    with pytest.raises(ValueError, match="cannot serve"):
        _stream(b, package("tell me a joke"))
    cancel = threading.Event()
    cancel.set()
    assert _stream(ToolBackend(delay_s=5.0), cancel=cancel) == []  # a cancelled delay returns at once


def test_lm_backend_streams_the_callable_with_the_full_context():
    prompts = []

    def generate(prompt):
        prompts.append(prompt)
        yield from ["fo", "rty", "-two"]

    b = LMBackend(generate)
    assert _stream(b) == ["fo", "rty", "-two"]
    assert prompts == [render_prompt(package())]
    assert "user: hello" in prompts[0] and "Request: what is 347 times 29" in prompts[0]
    with pytest.raises(TypeError):
        LMBackend("not callable")


def test_make_backend_from_config():
    c = base_config()
    assert isinstance(make_backend(c), ToolBackend)
    c.background.backend = "http"
    with pytest.raises(ValueError, match="needs background.url"):
        make_backend(c)
    c.background.url, c.background.model, c.background.api_key_env = "http://127.0.0.1:1/v1", "m", "X_KEY"
    b = make_backend(c)
    assert isinstance(b, OpenAIChatBackend) and b.url == "http://127.0.0.1:1/v1/chat/completions"
    c.background.backend = "lm"
    with pytest.raises(ValueError, match="generate"):
        make_backend(c)
    assert isinstance(make_backend(c, generate=lambda p: iter(["x"])), LMBackend)
    c.background.backend = "magic"
    with pytest.raises(ValueError, match="unknown background.backend 'magic'"):
        make_backend(c)


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def _sse(self, lines):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for line in lines:
            self.wfile.write(line.encode() + b"\n\n")
            self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        route = self.path.split("/")[1]
        delta = [json.dumps({"choices": [{"delta": {"content": p}}]}) for p in PIECES]
        if route == "v1":
            role = json.dumps({"choices": [{"delta": {"role": "assistant"}}]})
            self._sse([": keep-alive", f"data: {role}"] + [f"data: {d}" for d in delta] + ["data: [DONE]"])
        elif route == "err500":  # a careless server echoing the Authorization header
            self.send_response(500)
            self.end_headers()
            self.wfile.write(f"internal error (auth was {self.headers.get('Authorization')})".encode())
        elif route == "badjson":
            self._sse([f"data: {delta[0]}", "data: {not json"])
        elif route == "truncated":
            self._sse([f"data: {delta[0]}"])
        elif route == "streamerror":
            self._sse(['data: {"error": {"message": "model overloaded"}}'])
        else:
            self.send_error(404, "no such route")


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _run(backend):
    runner = BackgroundRunner(backend, timeout_s=10)
    job = runner.submit(package())
    return [e for e in wait_for(runner, 1) if e.job_id == job]


def test_http_backend_streams_and_sends_the_key(server, monkeypatch, caplog):
    monkeypatch.setenv("BG_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    _Handler.seen.clear()
    b = OpenAIChatBackend(server + "/v1/", "tiny-chat", api_key_env="BG_TEST_KEY")
    events = _run(b)
    assert [e.text for e in events if e.kind == "chunk"] == PIECES
    assert events[-1].kind == "done" and events[-1].text == "The answer is 42."
    (req,) = _Handler.seen
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "tiny-chat" and req["body"]["stream"] is True
    assert "user: hello" in req["body"]["messages"][1]["content"]  # the conversation, not just the query
    assert KEY not in repr(b) and KEY not in str(vars(b))
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    "route, text, match",
    [
        ("err500", "error: http 500", "HTTP 500"),
        ("badjson", "error: malformed response", "malformed JSON"),
        ("truncated", "error: incomplete response", "without 'data: \\[DONE\\]'"),
        ("streamerror", "error: server error", "model overloaded"),
        ("unknown", "error: http 404", "HTTP 404"),
    ],
)
def test_http_server_errors_become_short_error_events_with_the_detail_in_the_log(
        server, monkeypatch, caplog, route, text, match):
    """The model reads `error: <kind>` (a few slot tokens); the URL and the server's words go to the host log."""
    monkeypatch.setenv("BG_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    b = OpenAIChatBackend(f"{server}/{route}/chat/completions", "m", api_key_env="BG_TEST_KEY")
    events = _run(b)
    err = events[-1]
    assert err.kind == "error" and err.text == text
    assert b.url in caplog.text and re.search(match, caplog.text), caplog.text
    assert all(KEY not in e.text for e in events) and KEY not in caplog.text


def test_http_connection_refused_and_missing_key(monkeypatch, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("BG_TEST_KEY", KEY)
    events = _run(OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "m", api_key_env="BG_TEST_KEY", timeout_s=2))
    assert (events[-1].kind, events[-1].text) == ("error", "error: unreachable")
    assert "cannot connect" in caplog.text and f"127.0.0.1:{port}" in caplog.text and KEY not in caplog.text
    monkeypatch.delenv("BG_TEST_KEY")
    events = _run(OpenAIChatBackend("http://127.0.0.1:1/v1", "m", api_key_env="BG_TEST_KEY"))
    assert (events[-1].kind, events[-1].text) == ("error", "error: api key not set")
    assert "BG_TEST_KEY" in caplog.text and "not set" in caplog.text
    with pytest.raises(ValueError, match="http://"):
        OpenAIChatBackend("ftp://x", "m")
