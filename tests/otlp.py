"""An in-process OTLP/gRPC trace collector, for the tests and the bench: a gRPC server on
loopback implementing opentelemetry-proto's TraceService, keeping what it receives."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on loopback that keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, str]] = []
        self._received = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._received:
            for resource_spans in request.resource_spans:
                self.resources.append({a.key: a.value.string_value
                                       for a in resource_spans.resource.attributes})
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
            self._received.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes, names: set[str]) -> list[Span]:
        """The spans of ``trace_id``, waiting up to 10 s until ``names`` are among them."""
        def arrived() -> list[Span]:
            return [s for s in self.spans if s.trace_id == trace_id]

        with self._received:
            self._received.wait_for(lambda: names <= {s.name for s in arrived()}, timeout=10)
            return arrived()

    def first(self, matches: Callable[[Span], bool]) -> Span:
        """The first span ``matches`` accepts, waiting up to 10 s for it."""
        with self._received:
            self._received.wait_for(lambda: any(map(matches, self.spans)), timeout=10)
            return next(s for s in self.spans if matches(s))

    def stop(self) -> None:
        self._server.stop(grace=None)
