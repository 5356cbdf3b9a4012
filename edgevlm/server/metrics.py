"""The server's Prometheus metrics (prometheus_client, one registry per app so several apps can live in one
process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgevlm_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "edgevlm_queue_depth",
            "Requests waiting for the model (not counting the one running)",
            registry=self.registry,
        )
        self.in_flight = Gauge("edgevlm_in_flight", "Requests admitted: running plus waiting", registry=self.registry)
        self.latency = Histogram(
            "edgevlm_request_seconds",
            "Seconds from admission to the last token",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter("edgevlm_generated_tokens", "Tokens generated", registry=self.registry)
        self.prompt_tokens = Counter(
            "edgevlm_prompt_tokens", "Prompt tokens processed (images included)", registry=self.registry
        )
        self.tokens_per_second = Gauge(
            "edgevlm_decode_tokens_per_second", "Generated tokens per second of the last answer", registry=self.registry
        )
        self.rejected = Counter(
            "edgevlm_rejected_queue_full",
            "Requests refused with 429 because the queue was full",
            registry=self.registry,
        )

        self.realtime_sessions = Gauge(
            "edgevlm_realtime_sessions", "Open realtime (WebSocket) sessions", registry=self.registry
        )
        self.realtime_frames = Counter(
            "edgevlm_realtime_frames",
            "Frames received on realtime sessions, and those dropped by the rate limit",
            ["outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
