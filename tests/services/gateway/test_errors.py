"""The mapping of gRPC statuses to HTTP answers (a unit test of errors.py: the statuses are
built as a server would send them, with their google.rpc details)."""

from __future__ import annotations

import json

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from darkroom.services.gateway.errors import HTTP_STATUS, from_darkroom_error
from darkroom_client.errors import DarkroomError, from_rpc_error


def _failed_call(code: grpc.StatusCode, *details: object) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message="over the limit")
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, "over the limit")


def _raised(call: grpc.aio.AioRpcError) -> DarkroomError:
    try:
        raise from_rpc_error(call) from call  # as the client's retry loop raises it
    except DarkroomError as error:
        return error


def test_resource_exhausted_is_429_with_retry_after() -> None:
    call = _failed_call(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        error_details_pb2.ErrorInfo(reason="QUOTA_EXCEEDED", metadata={"limit": "4"}),
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)
        ),
    )
    response = from_darkroom_error(_raised(call))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"  # rounded up: never too early
    error = json.loads(bytes(response.body))["error"]
    assert error["code"] == "RESOURCE_EXHAUSTED"
    assert error["reason"] == "QUOTA_EXCEEDED"
    assert error["metadata"] == {"limit": "4"}


def test_without_retry_info_there_is_no_retry_after() -> None:
    response = from_darkroom_error(_raised(_failed_call(grpc.StatusCode.RESOURCE_EXHAUSTED)))
    assert response.status_code == 429
    assert "retry-after" not in response.headers


def test_every_code_has_a_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404
