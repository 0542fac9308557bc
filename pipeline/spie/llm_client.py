"""A minimal client for an OpenAI-compatible chat endpoint (a user's local LLM server).

Both the HTTP response writer and the LLM judge talk through this one client, so the
endpoint, model, key and timeout are configured once. It uses only the standard library
(``urllib``): the request is one JSON POST to ``<base_url>/chat/completions`` and the
answer is ``choices[0].message.content``. Failures (connection refused, HTTP error,
malformed JSON, no choices) raise :class:`ResponseWriterError` naming the endpoint.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipeline.spie.errors import ResponseWriterError

__all__ = ["ChatClient"]


@dataclass(frozen=True)
class ChatClient:
    """``base_url`` like ``http://127.0.0.1:8000/v1``; ``api_key`` optional."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float,
        top_p: float,
        max_tokens: int = 512,
        seed: int | None = None,
    ) -> str:
        """The assistant's text for ``messages`` (one non-streamed completion)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "stream": False,
        }
        if seed is not None:
            body["seed"] = seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                payload = json.loads(reply.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise ResponseWriterError(
                f"chat endpoint {self.endpoint} answered HTTP {exc.code}: {exc.reason}"
            ) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ResponseWriterError(f"chat endpoint {self.endpoint} unreachable: {exc}") from exc
        except ValueError as exc:
            raise ResponseWriterError(f"chat endpoint {self.endpoint} sent invalid JSON") from exc
        try:
            text = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ResponseWriterError(
                f"chat endpoint {self.endpoint} sent no choices[0].message.content"
            ) from exc
        if not isinstance(text, str) or not text.strip():
            raise ResponseWriterError(f"chat endpoint {self.endpoint} sent an empty message")
        return text.strip()
