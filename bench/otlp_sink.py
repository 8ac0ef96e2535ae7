"""`python -m bench.otlp_sink PORT`: an OTLP/gRPC trace collector that keeps nothing, for
the observability section: the traced services export to it as to a real collector. On
SIGTERM it prints what it took (`{"requests": N, "spans": M}`) and exits."""

from __future__ import annotations

import json
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests = 0
        self.spans = 0
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        with self._lock:
            self.requests += 1
            self.spans += spans
        return trace_service_pb2.ExportTraceServiceResponse()


def main(port: int) -> None:
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    server.stop(grace=1).wait()
    print(json.dumps({"requests": sink.requests, "spans": sink.spans}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
