"""Per-request log line and Serve metrics (exported through Ray's Prometheus endpoint)."""

from __future__ import annotations

import collections
import logging

logger = logging.getLogger("ray.serve")

LATENCY_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
TOKENS_PER_S_BOUNDARIES = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


class RequestTelemetry:
    """Counters and histograms tagged by model; one `record` call per finished request."""

    def __init__(self, model_name: str, log_requests: bool = True):
        from ray.serve.metrics import Counter, Histogram

        self.model_name = model_name
        self.log_requests = log_requests
        self.recent: collections.deque[dict] = collections.deque(maxlen=64)  # last finished requests
        tags = ("model", "endpoint", "status")
        self.requests = Counter("chimed_serve_requests", "Requests finished, by status", tag_keys=tags)
        self.prompt_tokens = Counter("chimed_serve_prompt_tokens", "Prompt tokens processed", tag_keys=("model",))
        self.completion_tokens = Counter("chimed_serve_completion_tokens", "Tokens generated", tag_keys=("model",))
        self.latency = Histogram(
            "chimed_serve_request_latency_s", "Request latency on the replica (s)",
            boundaries=LATENCY_BOUNDARIES_S, tag_keys=("model", "endpoint"),
        )
        self.tokens_per_s = Histogram(
            "chimed_serve_tokens_per_s", "Generated tokens per second of one request",
            boundaries=TOKENS_PER_S_BOUNDARIES, tag_keys=("model",),
        )
        self.batch_size = Histogram(
            "chimed_serve_forward_batch_size", "Sequences per generate() call (after coalescing)",
            boundaries=BATCH_BOUNDARIES, tag_keys=("model",),
        )

    def forward_batch(self, sequences: int) -> None:
        """Record the size of one forward batch."""
        self.batch_size.observe(sequences, tags={"model": self.model_name})

    def record(self, request_id: str, endpoint: str, prompt_tokens: int, completion_tokens: int,
               latency_s: float, stream: bool, status: str = "ok") -> None:
        """Count one request and write its log line."""
        model = {"model": self.model_name}
        self.recent.append({"request_id": request_id, "status": status, "stream": stream,
                            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
        self.requests.inc(1, tags={**model, "endpoint": endpoint, "status": status})
        if prompt_tokens:  # Ray counters refuse an increment of 0
            self.prompt_tokens.inc(prompt_tokens, tags=model)
        if completion_tokens:
            self.completion_tokens.inc(completion_tokens, tags=model)
        self.latency.observe(latency_s, tags={**model, "endpoint": endpoint})
        rate = completion_tokens / latency_s if latency_s > 0 else 0.0
        if completion_tokens:
            self.tokens_per_s.observe(rate, tags=model)
        if self.log_requests:
            logger.info(
                "request %s model=%s endpoint=%s stream=%s status=%s prompt_tokens=%d completion_tokens=%d "
                "latency_ms=%.1f tokens_per_s=%.1f",
                request_id, self.model_name, endpoint, stream, status, prompt_tokens, completion_tokens,
                latency_s * 1000, rate,
            )
