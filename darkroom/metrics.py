"""Prometheus metrics: every family Darkroom exports, declared here once, and the one
listener per process that serves them (`DARKROOM_METRICS_ADDRESS`).

Names follow Prometheus' conventions: base units (`_seconds`, `_bytes`), `_total` on
counters, and bounded label sets only — a model, a method, a status code, an outcome or a
reason, never a job id or an owner. A process without a listener counts nothing: each
recording function returns at once while `enabled()` is false, so metrics off costs one
test of a flag. The gRPC families take the names go-grpc-prometheus made common, so
existing dashboards read them. Queue depth is not counted by the processes that move jobs
but read from the job table by the reconciler (`record_queue`), once a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

log = structlog.get_logger("darkroom.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_WAIT = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_RUN = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

# -- gRPC servers (every Darkroom method; health and reflection are not counted) --------
RPC_STARTED = Counter(
    "grpc_server_started",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
    registry=REGISTRY,
)
RPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's start to its status (a stream's whole life for streams).",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=_FAST,
    registry=REGISTRY,
)
RPC_SENT = Counter(
    "grpc_server_msg_sent",
    "Messages sent on server streams.",
    ["grpc_service", "grpc_method"],
    registry=REGISTRY,
)
RPC_OPEN_STREAMS = Gauge(
    "grpc_server_open_streams",
    "Server streams open now (WatchJob).",
    ["grpc_service", "grpc_method"],
    registry=REGISTRY,
)

# -- jobs: one count per committed move, by the process that made it -------------------
JOBS_SUBMITTED = Counter(
    "darkroom_jobs_submitted",
    "Jobs recorded by SubmitJob (replays not counted).",
    ["model"],
    registry=REGISTRY,
)
ATTEMPTS_STARTED = Counter(
    "darkroom_job_attempts_started",
    "Attempts started (a job's first start and every retry's).",
    ["model"],
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "darkroom_jobs_finished",
    "Jobs that reached a terminal state, by outcome and, for failures, the gRPC code.",
    ["model", "outcome", "reason"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "darkroom_job_retries",
    "Attempts handed back to the queue to run again, by reason.",
    ["model", "reason"],
    registry=REGISTRY,
)
CANCELLATIONS = Counter(
    "darkroom_job_cancellations",
    "Owners' cancels that changed a job, by the state it was in.",
    ["model", "state"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "darkroom_job_queue_wait_seconds",
    "From when an attempt could start (submit, or the end of a retry's backoff) to its start.",
    ["model"],
    buckets=_WAIT,
    registry=REGISTRY,
)
RUN_SECONDS = Histogram(
    "darkroom_job_run_seconds",
    "From an attempt's start to its end, by how it ended.",
    ["model", "outcome"],
    buckets=_RUN,
    registry=REGISTRY,
)

# -- the queue, from the job table (the reconciler, once a pass) -----------------------
QUEUE_QUEUED = Gauge(
    "darkroom_queue_queued_jobs", "QUEUED jobs, due or backing off.", ["model"], registry=REGISTRY
)
QUEUE_DUE = Gauge(
    "darkroom_queue_due_jobs", "QUEUED jobs that may start now.", ["model"], registry=REGISTRY
)
QUEUE_RUNNING = Gauge("darkroom_queue_running_jobs", "RUNNING jobs.", ["model"], registry=REGISTRY)
QUEUE_OLDEST = Gauge(
    "darkroom_queue_oldest_due_age_seconds",
    "How long the longest-waiting due job has waited (0 when none is due).",
    ["model"],
    registry=REGISTRY,
)
QUEUE_READ_AT = Gauge(
    "darkroom_queue_read_timestamp_seconds",
    "When the reconciler last read the queue gauges from the job table.",
    registry=REGISTRY,
)

# -- generators --------------------------------------------------------------------------
GENERATOR_BUSY = Gauge(
    "darkroom_generator_busy",
    "1 while the generator runs an attempt, else 0.",
    ["model"],
    registry=REGISTRY,
)
GENERATOR_STEPS = Counter(
    "darkroom_generator_steps", "Denoising steps run.", ["model"], registry=REGISTRY
)
GENERATOR_STEP_RATE = Gauge(
    "darkroom_generator_steps_per_second",
    "Steps per second of the attempt running now, or of the last one.",
    ["model"],
    registry=REGISTRY,
)
GENERATOR_LOAD_SECONDS = Gauge(
    "darkroom_generator_model_load_seconds",
    "How long loading the model took at start.",
    ["model"],
    registry=REGISTRY,
)
GENERATOR_HEARTBEAT_AGE = Gauge(
    "darkroom_generator_heartbeat_age_seconds",
    "Time since the generator's last sign of life (a step or its heartbeat).",
    registry=REGISTRY,
)
GENERATOR_CUDA_ALLOCATED = Gauge(
    "darkroom_generator_cuda_memory_allocated_bytes",
    "CUDA memory held by tensors (on a GPU only).",
    registry=REGISTRY,
)
GENERATOR_CUDA_RESERVED = Gauge(
    "darkroom_generator_cuda_memory_reserved_bytes",
    "CUDA memory reserved by the caching allocator (on a GPU only).",
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "darkroom_generator_dead_letters",
    "Queue messages set aside as poison, by reason.",
    ["reason"],
    registry=REGISTRY,
)
LOOP_ERRORS = Counter(
    "darkroom_generator_loop_errors",
    "Unexpected errors the generator's queue loop survived.",
    registry=REGISTRY,
)

# -- events ------------------------------------------------------------------------------
EVENTS_WATCHERS = Gauge("darkroom_events_watchers", "WatchJob streams open now.", registry=REGISTRY)
EVENTS_RELAYED = Counter(
    "darkroom_events_relayed",
    "Events written to watchers (positions not counted).",
    registry=REGISTRY,
)
EVENTS_LAG = Histogram(
    "darkroom_events_delivery_lag_seconds",
    "From an event's append to Redis (its id's time) to its write to a watcher.",
    buckets=(*_FAST, 30, 60),
    registry=REGISTRY,
)

# -- reconciler --------------------------------------------------------------------------
REPAIRS = Counter(
    "darkroom_reconciler_repairs",
    "Repairs made, by kind.",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "darkroom_reconciler_pass_seconds",
    "How long one reconciler pass took.",
    buckets=(*_FAST, 30, 60),
    registry=REGISTRY,
)

# -- webhook delivery workers --------------------------------------------------------------
WEBHOOK_TRIES = Counter(
    "darkroom_webhook_tries",
    "Webhook POSTs tried, by how the delivery stood after the try "
    "(delivered, pending: will retry, dead: no tries left, superseded, unrecorded).",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_TRY_SECONDS = Histogram(
    "darkroom_webhook_try_seconds",
    "Time to sign and POST one try, to the receiver's answer or the failure.",
    buckets=(*_FAST, 15, 30),
    registry=REGISTRY,
)

# -- HTTP gateway ------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "darkroom_gateway_http_requests",
    "HTTP requests answered, by route and status code.",
    ["route", "method", "code"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "darkroom_gateway_http_request_seconds",
    "Time to answer an HTTP request (to the end of the headers for streams).",
    ["route", "method"],
    buckets=_FAST,
    registry=REGISTRY,
)
HTTP_OPEN_STREAMS = Gauge(
    "darkroom_gateway_open_streams",
    "Server-sent event streams and WebSockets open now.",
    ["kind"],
    registry=REGISTRY,
)

_enabled = False


def enabled() -> bool:
    """Whether this process counts (it serves /metrics)."""
    return _enabled


def enable(on: bool = True) -> None:
    """Count from now on (or stop); `serve` calls it. Tests and benches call it directly."""
    global _enabled  # noqa: PLW0603 - one switch per process, read on every count
    _enabled = on


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port`) as a pair; ValueError naming the problem otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"DARKROOM_METRICS_ADDRESS {address!r} is not host:port")
    return host.strip("[]"), int(port)


@dataclass
class Listener:
    """A running /metrics listener."""

    port: int
    close: Callable[[], None]


def serve(address: str) -> Listener | None:
    """Serve /metrics on `address` (a thread of its own, off the event loop) and start
    counting; None when `address` is empty."""
    if not address:
        return None
    host, port = split_address(address)
    server, thread = start_http_server(port, host, registry=REGISTRY)
    bound = int(server.server_address[1])
    enable()
    log.info("metrics_listening", address=address, port=bound)

    def close() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return Listener(bound, close)


def since(started: float) -> float:
    """Seconds from `started` (a `time.perf_counter()`) to now."""
    return time.perf_counter() - started


# -- recording, for call sites that would otherwise need the label tuples --------------


@dataclass(frozen=True)
class QueueCount:
    """One model's line of the reconciler's queue query."""

    model: str
    queued: int
    due: int
    running: int
    oldest_due_age_s: float


_queue_models: set[str] = set()


def record_queue(counts: Iterable[QueueCount], read_at: float) -> None:
    """Set the queue gauges; a model that has no active job any more reads 0, not its last
    value."""
    if not _enabled:
        return
    seen = set()
    for count in counts:
        seen.add(count.model)
        QUEUE_QUEUED.labels(count.model).set(count.queued)
        QUEUE_DUE.labels(count.model).set(count.due)
        QUEUE_RUNNING.labels(count.model).set(count.running)
        QUEUE_OLDEST.labels(count.model).set(max(0.0, count.oldest_due_age_s))
    for model in _queue_models - seen:
        for gauge in (QUEUE_QUEUED, QUEUE_DUE, QUEUE_RUNNING, QUEUE_OLDEST):
            gauge.labels(model).set(0)
    _queue_models.update(seen)
    QUEUE_READ_AT.set(read_at)
