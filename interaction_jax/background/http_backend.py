"""OpenAI-compatible chat-completions backend with streaming (stdlib only).

POSTs `{"model", "messages", "stream": true}` to `<url>/chat/completions` and reads the
server-sent events (`data: {...}` lines, ending with `data: [DONE]`), yielding each
`choices[0].delta.content`. Any server speaking this protocol works (OpenAI, vLLM, llama.cpp,
Ollama's /v1 endpoint, ...).

The API key is read from the environment variable *named* in the config at request time and
is never stored on the object, logged, or put into an error message (a server that echoes the
Authorization header back in its error body gets the key redacted). Each error carries a short
`kind` ("http 500", "unreachable", "malformed response", ...): that is all the interaction model
reads (`error: <kind>` in its background slots); the full message, with the endpoint URL, goes
to the host log only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

from interaction_jax.background.protocol import SYSTEM_PROMPT, ContextPackage, chat_messages

log = logging.getLogger(__name__)

_MAX_ERROR_BODY = 300


class HTTPBackendError(RuntimeError):
    """The endpoint failed; the message (safe to log) names the URL, `kind` is the short form the model reads."""

    def __init__(self, message: str, kind: str = "failed"):
        super().__init__(message)
        self.kind = kind


class OpenAIChatBackend:
    """Streams chat completions from an OpenAI-compatible endpoint.

    Args:
      url: base URL (`http://host:port/v1`) or the full `.../chat/completions` URL.
      model: model name sent with each request.
      api_key_env: name of the environment variable holding the API key ("" = no key).
      timeout_s: socket timeout (connect and each read), which also bounds how long a cancelled
        job's thread can stay blocked.
    """

    name = "http"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str = "",
        timeout_s: float = 30.0,
        system_prompt: str = SYSTEM_PROMPT,
        extra_body: dict | None = None,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAIChatBackend: url must start with http:// or https://, got {url!r}")
        if not model:
            raise ValueError("OpenAIChatBackend: background.model (the model name) is empty")
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:
        return f"OpenAIChatBackend(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _api_key(self) -> str:
        if not self.api_key_env:
            return ""
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise HTTPBackendError(f"environment variable {self.api_key_env} (background.api_key_env) is not set",
                                   "api key not set")
        return key

    def _fail(self, message: str, key: str, kind: str) -> HTTPBackendError:
        if key:
            message = message.replace(key, "***")
        return HTTPBackendError(f"{self.url}: {message}", kind)

    def stream(self, package: ContextPackage, cancel: threading.Event) -> Iterator[str]:
        key = self._api_key()
        body = {
            "model": self.model,
            "messages": chat_messages(package, self.system_prompt),
            "stream": True,
            **self.extra_body,
        }
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        log.debug("POST %s model=%s session=%s", self.url, self.model, package.session_id)
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as e:
            detail = e.read(_MAX_ERROR_BODY).decode("utf-8", "replace").strip()
            raise self._fail(f"HTTP {e.code} {e.reason}: {detail}", key, f"http {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise self._fail(f"cannot connect: {reason}", key, "unreachable") from None
        with resp:
            yield from self._read_events(resp, cancel, key)

    def _read_events(self, resp, cancel: threading.Event, key: str) -> Iterator[str]:
        try:
            while not cancel.is_set():
                raw = resp.readline()
                if not raw:
                    raise self._fail("stream ended without 'data: [DONE]'", key, "incomplete response")
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments (":"), event:/id: fields
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                try:
                    msg = json.loads(data)
                except json.JSONDecodeError:
                    raise self._fail(f"malformed JSON in stream: {data[:80]!r}", key, "malformed response") from None
                if isinstance(msg, dict) and "error" in msg:
                    detail = str(msg["error"])[:_MAX_ERROR_BODY]
                    raise self._fail(f"server error in stream: {detail}", key, "server error")
                try:
                    content = msg["choices"][0].get("delta", {}).get("content") if msg.get("choices") else None
                except (AttributeError, KeyError, IndexError, TypeError):
                    raise self._fail(f"unexpected chunk shape: {data[:80]!r}", key, "malformed response") from None
                if content:
                    yield content
        except (TimeoutError, OSError) as e:
            kind = "read timeout" if isinstance(e, TimeoutError) else "read failed"
            raise self._fail(f"read failed: {e}", key, kind) from None
