"""Tokens generated, from the inference servers' own metrics endpoints (Prometheus text).

vLLM serves `vllm:generation_tokens_total`, SGLang `sglang:generation_tokens_total`; TGI's
`tgi_request_generated_tokens_sum` works the same way. Each source is polled on its own task
and parsed with prometheus_client's parser; gridpilot counts the increase since it started.
A counter that goes down means the server restarted: what it shows then is new tokens, not a
loss. An endpoint that does not answer is reported and counts nothing until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("gridpilot.tokens")


@dataclass
class TokenCount:
    """One source's count, pure: feed it what the endpoint showed."""

    total: float = 0.0  # tokens since gridpilot started
    last: float | None = None  # what the endpoint showed last
    resets: int = 0

    def update(self, shown: float) -> None:
        if self.last is not None:
            if shown < self.last:  # the server restarted: everything it shows is new
                self.resets += 1
                self.total += shown
            else:
                self.total += shown - self.last
        self.last = shown


def tokens_shown(text: str, metric: str) -> float:
    """The sum of every sample named `metric` (one per model or engine), or ValueError."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == metric
    ]
    if not found:
        raise ValueError(f"no {metric} in the endpoint's metrics")
    value = sum(found)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{metric} is {value}")
    return value


@dataclass
class TokenSource:
    id: str
    url: str
    metric: str
    poll_period_s: float
    timeout_s: float
    up: bool = False
    errors_total: int = 0
    last_error: str | None = None
    last_ok: float = -math.inf  # time.monotonic()

    def __post_init__(self) -> None:
        self.count = TokenCount()


class TokenMeter:
    """Polls every source on its own task; `total()` is what all of them generated."""

    def __init__(self, sources: list[TokenSource]) -> None:
        self.sources = sources
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    def total(self) -> float:
        return sum(s.count.total for s in self.sources)

    def start(self) -> None:
        if not self.sources:
            return
        self._client = httpx.AsyncClient()
        self._tasks = [
            asyncio.create_task(self._run(s), name=f"tokens:{s.id}") for s in self.sources
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self, source: TokenSource) -> None:
        while True:
            await self.poll(source)
            await asyncio.sleep(source.poll_period_s)

    async def poll(self, source: TokenSource) -> None:
        assert self._client is not None
        try:
            reply = await self._client.get(source.url, timeout=source.timeout_s)
            reply.raise_for_status()
            shown = tokens_shown(reply.text, source.metric)
        except (httpx.HTTPError, ValueError) as exc:
            source.errors_total += 1
            message = f"{type(exc).__name__}: {exc}"
            if source.up or message != source.last_error:
                log.warning("token source error", extra={"source": source.id, "error": message})
            source.up, source.last_error = False, message
            return
        if not source.up:
            log.info("token source up", extra={"source": source.id})
        source.count.update(shown)
        source.up, source.last_ok = True, time.monotonic()
