"""socker_transports.metrics: a Prometheus exporter for the `on_event` hook.

Needs the `metrics` extra (`pip install 'socker-steps[metrics]'`: prometheus-client).

    metrics = PrometheusMetrics()
    async with serve(routes, host, port, on_event=metrics,
                     http_handler=metrics.http_handler) as server:
        ...                                   # GET /metrics on the same port

    app = App(routes, on_event=metrics, http_handler=metrics.http_handler)  # ASGI

Every metric carries `side` ("server" or "client"). Names (with the default
namespace "socker"):

- `socker_open_connections` (gauge)
- `socker_handshakes_total{status}`: 101 for each open, the HTTP status of each
  refusal (0: none was sent, e.g. a timeout)
- `socker_closes_total{code}`
- `socker_step_transitions_total{flow, step}`: entries into `step` (the first
  step counts once per connection)
- `socker_messages_total{direction}` and `socker_message_bytes_total{direction}`
  (direction "in" or "out")
- `socker_handler_duration_seconds{flow, step}` (histogram)
- `socker_handler_failures_total{flow, step}`
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .wire.hooks import HandshakeRequest, HttpHandler, HttpResponse
from .wire.observe import (
    ConnectionClosed,
    ConnectionOpened,
    HandlerFinished,
    HandlerRaised,
    HandshakeRefused,
    MessageReceived,
    MessageSent,
    ObservedEvent,
    StepEntered,
)

#: Handler durations are mostly sub-millisecond; the tail is what matters.
DEFAULT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class PrometheusMetrics:
    """An `on_event` hook that keeps Prometheus metrics, and an `http_handler`
    that serves them at `path`. One instance may observe many servers and clients.

    Metrics live in `registry` (a new `CollectorRegistry` by default, so two
    instances never collide; pass `prometheus_client.REGISTRY` to join the
    process-wide one)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "socker",
        path: str = "/metrics",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.path = path
        ns, reg = namespace, self.registry
        self.open_connections = Gauge(
            f"{ns}_open_connections", "Open websocket connections", ["side"], registry=reg
        )
        self.handshakes = Counter(
            f"{ns}_handshakes",
            "Opening handshakes by HTTP status",
            ["side", "status"],
            registry=reg,
        )
        self.closes = Counter(
            f"{ns}_closes", "Closes by close code", ["side", "code"], registry=reg
        )
        self.step_transitions = Counter(
            f"{ns}_step_transitions",
            "Entries into each step",
            ["side", "flow", "step"],
            registry=reg,
        )
        self.messages = Counter(
            f"{ns}_messages", "Messages by direction", ["side", "direction"], registry=reg
        )
        self.message_bytes = Counter(
            f"{ns}_message_bytes", "Message bytes by direction", ["side", "direction"], registry=reg
        )
        self.handler_duration = Histogram(
            f"{ns}_handler_duration_seconds",
            "Step handler duration",
            ["side", "flow", "step"],
            buckets=tuple(buckets),
            registry=reg,
        )
        self.handler_failures = Counter(
            f"{ns}_handler_failures",
            "Handlers or hooks that raised",
            ["side", "flow", "step"],
            registry=reg,
        )

    def __call__(self, event: ObservedEvent) -> None:
        kind = type(event)
        if kind is MessageReceived or kind is MessageSent:
            assert isinstance(event, (MessageReceived, MessageSent))
            direction = "in" if kind is MessageReceived else "out"
            self.messages.labels(event.side, direction).inc()
            self.message_bytes.labels(event.side, direction).inc(event.size)
        elif kind is HandlerFinished:
            assert isinstance(event, HandlerFinished)
            self.handler_duration.labels(event.side, event.flow, event.step).observe(event.duration)
        elif kind is StepEntered:
            assert isinstance(event, StepEntered)
            self.step_transitions.labels(event.side, event.flow, event.step).inc()
        elif kind is ConnectionOpened:
            assert isinstance(event, ConnectionOpened)
            self.open_connections.labels(event.side).inc()
            self.handshakes.labels(event.side, "101").inc()
        elif kind is ConnectionClosed:
            assert isinstance(event, ConnectionClosed)
            self.open_connections.labels(event.side).dec()
            self.closes.labels(event.side, str(event.code)).inc()
        elif kind is HandshakeRefused:
            assert isinstance(event, HandshakeRefused)
            self.handshakes.labels(event.side, str(event.status)).inc()
        elif kind is HandlerRaised:
            assert isinstance(event, HandlerRaised)
            self.handler_failures.labels(event.side, event.flow, event.step).inc()

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def http_handler(self, request: HandshakeRequest) -> HttpResponse | None:
        """Answers GET/HEAD `path` with the metrics; None for anything else."""
        if request.path != self.path or request.method not in ("GET", "HEAD"):
            return None
        return HttpResponse(
            200, self.exposition(), CONTENT_TYPE_LATEST, headers=[("Cache-Control", "no-store")]
        )

    def serving(self, http_handler: HttpHandler) -> HttpHandler:
        """`http_handler` with `path` answered by the metrics first."""

        def combined(request: HandshakeRequest) -> HttpResponse | None:
            return self.http_handler(request) or http_handler(request)

        return combined


__all__ = ["DEFAULT_BUCKETS", "PrometheusMetrics"]
