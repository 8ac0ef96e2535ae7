"""Bad input on the wire, sent to the real Jobs and Events servers: bytes that are not a
message, page tokens that are not ours, Durations no timedelta holds, ids that are not
ids and values at the edge of their types. Each answers INVALID_ARGUMENT with a field
violation naming what is wrong, writes nothing, and never tells the caller Python's words."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf.descriptor import FieldDescriptor

from darkroom.services.events.app import EventsApp
from darkroom.services.jobs.app import JobsApp
from darkroom.v1 import events_service_pb2, job_pb2, jobs_service_pb2
from tests.helpers import RichError, new_request_id, rich_error

RowCount = Callable[[], Awaitable[int]]
ALICE = (("authorization", "Bearer alice-token"),)
# What Python or a library says when it fails; none of it may reach a caller.
EXCEPTION_TEXT = (
    "Error(",
    "Error:",
    "DecodeError",
    "Exception",
    "Traceback",
    "Unexpected <class",
    "google.protobuf",
    "Wire format",
    'File "',
)
METHODS: list[descriptor.MethodDescriptor] = [
    *jobs_service_pb2.DESCRIPTOR.services_by_name["JobsService"].methods,
    *events_service_pb2.DESCRIPTOR.services_by_name["EventsService"].methods,
]
GARBAGE = [
    pytest.param(b"\xff\xff\xff", id="bad-tag"),
    pytest.param(b"\x12\x7fshort", id="length-past-the-end"),
    pytest.param(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", id="varint-too-long"),
    pytest.param(b"\x0b\x10\x01", id="group-never-closed"),
]


@pytest.fixture(scope="module")
async def channels(
    jobs_app: JobsApp, events_app: EventsApp
) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """A raw channel to each server, by service name (no serializers: bytes go as sent)."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{jobs_app.port}") as jobs,
        grpc.aio.insecure_channel(f"127.0.0.1:{events_app.port}") as events,
    ):
        yield {"darkroom.v1.JobsService": jobs, "darkroom.v1.EventsService": events}


async def call_raw(
    channel: grpc.aio.Channel,
    path: str,
    payload: bytes,
    *,
    streaming: bool = False,
    metadata: tuple[tuple[str, str], ...] = ALICE,
) -> RichError:
    """Send `payload` as the request of `path` and return the error it must end with."""
    sent: Awaitable[Any]
    if streaming:
        stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(path)
        sent = drain(stream(payload, metadata=metadata, timeout=10))
    else:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
        sent = unary(payload, metadata=metadata, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sent
    return rich_error(raised.value)


async def drain(responses: AsyncIterable[Any], into: list[Any] | None = None) -> None:
    """Read a response stream to its end, keeping what arrives in `into`."""
    async for response in responses:
        if into is not None:
            into.append(response)


async def call(channels: dict[str, grpc.aio.Channel], method: str, request: Any) -> RichError:
    """Call a Darkroom RPC by name with a request message, as alice."""
    found = next(m for m in METHODS if m.name == method)
    return await call_raw(
        channels[found.containing_service.full_name],
        f"/{found.containing_service.full_name}/{method}",
        request.SerializeToString(),
        streaming=found.server_streaming,
    )


def assert_invalid(error: RichError, field: str) -> None:
    """INVALID_ARGUMENT through our error mapping, `field` named, no exception text."""
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.reason == "INVALID_ARGUMENT", error
    assert field in error.violations, error
    told = " ".join([error.message, *error.violations, *error.violations.values()])
    for text in EXCEPTION_TEXT:
        assert text not in told, (text, error)


@pytest.mark.parametrize("payload", GARBAGE)
@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.name)
async def test_bytes_that_are_no_message_are_invalid_argument_naming_the_request(
    channels: dict[str, grpc.aio.Channel],
    row_count: RowCount,
    method: descriptor.MethodDescriptor,
    payload: bytes,
) -> None:
    service = method.containing_service.full_name
    before = await row_count()
    error = await call_raw(
        channels[service],
        f"/{service}/{method.name}",
        payload,
        streaming=method.server_streaming,
    )
    assert_invalid(error, "request")
    assert error.violations["request"] == f"is not a valid {method.input_type.full_name} message"
    assert await row_count() == before


STRING_FIRST = [
    m
    for m in METHODS
    if 1 in m.input_type.fields_by_number
    and m.input_type.fields_by_number[1].type == FieldDescriptor.TYPE_STRING
]


@pytest.mark.parametrize("method", STRING_FIRST, ids=lambda method: method.name)
async def test_a_string_that_is_not_utf8_makes_no_message_either(
    channels: dict[str, grpc.aio.Channel], method: descriptor.MethodDescriptor
) -> None:
    service = method.containing_service.full_name
    # Field 1, a string, holding bytes no UTF-8 decoder takes.
    error = await call_raw(
        channels[service],
        f"/{service}/{method.name}",
        b"\x0a\x02\xc3\x28",
        streaming=method.server_streaming,
    )
    assert_invalid(error, "request")


async def test_empty_bytes_are_a_message_whose_fields_are_checked(
    channels: dict[str, grpc.aio.Channel],
) -> None:
    # Zero bytes parse as a message with every field unset: the handler runs and
    # names the missing field, not the message.
    error = await call_raw(
        channels["darkroom.v1.JobsService"], "/darkroom.v1.JobsService/GetJob", b""
    )
    assert_invalid(error, "job_id")
    assert "request" not in error.violations


async def test_a_caller_without_a_token_is_unauthenticated_before_its_bytes_are_judged(
    channels: dict[str, grpc.aio.Channel],
) -> None:
    error = await call_raw(
        channels["darkroom.v1.JobsService"],
        "/darkroom.v1.JobsService/SubmitJob",
        b"\xff\xff\xff",
        metadata=(),
    )
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert error.violations == {}


@pytest.mark.parametrize(
    ("path", "streaming"),
    [
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", True),
    ],
)
async def test_health_refuses_garbage_the_same_way(
    channels: dict[str, grpc.aio.Channel], path: str, streaming: bool
) -> None:
    for channel in channels.values():
        error = await call_raw(channel, path, b"\xff\xff\xff", streaming=streaming, metadata=())
        assert_invalid(error, "request")


async def test_reflection_refuses_a_garbage_message_in_its_stream(
    channels: dict[str, grpc.aio.Channel],
) -> None:
    path = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    list_services = b"\x3a\x00"  # ServerReflectionRequest{list_services: ""}
    answers: list[bytes] = []
    stream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channels[
        "darkroom.v1.JobsService"
    ].stream_stream(path)
    responses = stream(iter([list_services, b"\xff\xff\xff"]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await drain(responses, answers)
    assert len(answers) == 1  # the good message was answered, then the bad one ended it
    assert_invalid(rich_error(raised.value), "request")


def _token(payload: Any) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


SOME_ID = str(uuid.uuid4())
BAD_TOKENS = [
    pytest.param("garbage!!", id="not-base64"),
    pytest.param(_token(b"\xff\xfe\xfd"), id="not-utf8"),
    pytest.param(_token(b"{not json"), id="not-json"),
    pytest.param(_token([SOME_ID, 0]), id="a-list"),
    pytest.param(_token("before"), id="a-string"),
    pytest.param(_token(7), id="a-number"),
    pytest.param(_token({"before": 5, "state": 0}), id="before-a-number"),
    pytest.param(_token({"before": [SOME_ID], "state": 0}), id="before-a-list"),
    pytest.param(_token({"before": {"id": SOME_ID}, "state": 0}), id="before-an-object"),
    pytest.param(_token({"before": None, "state": 0}), id="before-null"),
    pytest.param(_token({"before": "not-a-uuid", "state": 0}), id="before-not-a-uuid"),
    pytest.param(_token({"before": f"{{{SOME_ID}}}", "state": 0}), id="before-braced"),
    pytest.param(_token({"before": SOME_ID, "state": "0"}), id="state-a-string"),
    pytest.param(_token({"before": SOME_ID, "state": False}), id="state-false"),
    pytest.param(_token({"before": SOME_ID, "state": 0.5}), id="state-a-fraction"),
    pytest.param(_token({"before": SOME_ID}), id="no-state"),
    pytest.param(_token({"state": 0}), id="no-before"),
    pytest.param(_token({"before": SOME_ID, "state": 0, "more": 1}), id="extra-key"),
    pytest.param(_token(b"[" * 100_000), id="nested-past-the-recursion-limit"),
    pytest.param(_token(b'{"before": "' + b"0" * 10**6 + b'"}'), id="a-megabyte"),
]


@pytest.mark.parametrize("token", BAD_TOKENS)
async def test_a_page_token_that_is_not_ours_is_invalid_argument(
    channels: dict[str, grpc.aio.Channel], token: str
) -> None:
    error = await call(channels, "ListJobs", jobs_service_pb2.ListJobsRequest(page_token=token))
    assert_invalid(error, "page_token")


async def test_our_own_page_token_still_pages(channels: dict[str, grpc.aio.Channel]) -> None:
    # The positive control for the tokens above: a token the server wrote is taken.
    stub = channels["darkroom.v1.JobsService"].unary_unary(
        "/darkroom.v1.JobsService/ListJobs",
        request_serializer=jobs_service_pb2.ListJobsRequest.SerializeToString,
        response_deserializer=jobs_service_pb2.ListJobsResponse.FromString,
    )
    submit = channels["darkroom.v1.JobsService"].unary_unary(
        "/darkroom.v1.JobsService/SubmitJob",
        request_serializer=jobs_service_pb2.SubmitJobRequest.SerializeToString,
        response_deserializer=jobs_service_pb2.SubmitJobResponse.FromString,
    )
    for _ in range(2):
        request = jobs_service_pb2.SubmitJobRequest(
            request_id=new_request_id(), spec=job_pb2.JobSpec(prompt="a page of two")
        )
        await submit(request, metadata=ALICE, timeout=10)
    first = await stub(jobs_service_pb2.ListJobsRequest(page_size=1), metadata=ALICE, timeout=10)
    assert first.next_page_token
    second = await stub(
        jobs_service_pb2.ListJobsRequest(page_size=1, page_token=first.next_page_token),
        metadata=ALICE,
        timeout=10,
    )
    assert [job.id for job in second.jobs] != [job.id for job in first.jobs]


def _submit(**fields: Any) -> jobs_service_pb2.SubmitJobRequest:
    spec = fields.pop("spec", {})
    spec.setdefault("prompt", "a wire test")
    return jobs_service_pb2.SubmitJobRequest(
        request_id=fields.pop("request_id", new_request_id()),
        spec=job_pb2.JobSpec(**spec),
        **fields,
    )


def _timeout(seconds: int, nanos: int = 0) -> jobs_service_pb2.SubmitJobRequest:
    request = _submit()
    request.queue_timeout.seconds = seconds
    request.queue_timeout.nanos = nanos
    return request


SECONDS_MAX = 2**63 - 1
STATE = job_pb2.JobState.ValueType
BAD_SUBMITS = [
    pytest.param(_timeout(2**62), "queue_timeout", id="timeout-2^62-s"),
    pytest.param(_timeout(-(2**62)), "queue_timeout", id="timeout-minus-2^62-s"),
    pytest.param(_timeout(SECONDS_MAX, 999_999_999), "queue_timeout", id="timeout-int64-max"),
    pytest.param(_timeout(315_576_000_001), "queue_timeout", id="timeout-past-duration-range"),
    pytest.param(_timeout(10**10), "queue_timeout", id="timeout-a-valid-300-years"),
    pytest.param(_timeout(60, 2_000_000_000), "queue_timeout", id="nanos-two-seconds"),
    pytest.param(_timeout(60, -5), "queue_timeout", id="nanos-negative-seconds-positive"),
    pytest.param(_timeout(-60, 5), "queue_timeout", id="seconds-negative-nanos-positive"),
    pytest.param(_timeout(0, -1), "queue_timeout", id="minus-a-nanosecond"),
    pytest.param(_timeout(86_400, 1), "queue_timeout", id="a-nanosecond-past-24-hours"),
    pytest.param(_submit(request_id="x" * 1_000_000), "request_id", id="request-id-a-megabyte"),
    pytest.param(_submit(request_id="\u0661" * 32), "request_id", id="request-id-arabic-digits"),
    pytest.param(_submit(request_id=f"{SOME_ID}\n"), "request_id", id="request-id-newline"),
    pytest.param(_submit(spec={"prompt": "p" * 3_000_000}), "spec.prompt", id="prompt-3-mb"),
    pytest.param(_submit(spec={"prompt": "\x00"}), "spec.prompt", id="prompt-nul"),
    pytest.param(
        _submit(spec={"negative_prompt": "\x00" * 10}), "spec.negative_prompt", id="neg-nul"
    ),
    pytest.param(_submit(spec={"seed": 2**63 - 1}), "spec.seed", id="seed-int64-max"),
    pytest.param(_submit(spec={"seed": -(2**63)}), "spec.seed", id="seed-int64-min"),
    pytest.param(_submit(spec={"width": 2**31 - 1}), "spec.width", id="width-int32-max"),
    pytest.param(_submit(spec={"height": -(2**31)}), "spec.height", id="height-int32-min"),
    pytest.param(_submit(spec={"steps": 2**31 - 1}), "spec.steps", id="steps-int32-max"),
    pytest.param(_submit(spec={"steps": -1}), "spec.steps", id="steps-negative"),
    pytest.param(_submit(spec={"num_images": 2**31 - 1}), "spec.num_images", id="images-int32-max"),
    pytest.param(_submit(spec={"guidance_scale": float("nan")}), "spec.guidance_scale", id="nan"),
    pytest.param(_submit(spec={"guidance_scale": -float("inf")}), "spec.guidance_scale", id="-inf"),
    pytest.param(_submit(spec={"model": "m\x00" * 500_000}), "spec.model", id="model-a-megabyte"),
]


@pytest.mark.parametrize(("request_", "field"), BAD_SUBMITS)
async def test_a_submit_at_the_edge_of_its_types_is_invalid_and_writes_nothing(
    channels: dict[str, grpc.aio.Channel],
    row_count: RowCount,
    request_: jobs_service_pb2.SubmitJobRequest,
    field: str,
) -> None:
    before = await row_count()
    started = time.monotonic()
    error = await call(channels, "SubmitJob", request_)
    assert time.monotonic() - started < 2  # refused at once, not after scanning megabytes
    assert_invalid(error, field)
    # What the caller sent is quoted only in part: the trailer stays far from its limit.
    assert all(len(description) < 1_000 for description in error.violations.values())
    assert await row_count() == before


async def test_the_longest_and_most_precise_valid_timeout_is_taken(
    channels: dict[str, grpc.aio.Channel], row_count: RowCount
) -> None:
    # The positive control for the Durations above: 23:59:59.999999999 is in range.
    submit = channels["darkroom.v1.JobsService"].unary_unary(
        "/darkroom.v1.JobsService/SubmitJob",
        request_serializer=jobs_service_pb2.SubmitJobRequest.SerializeToString,
        response_deserializer=jobs_service_pb2.SubmitJobResponse.FromString,
    )
    before = await row_count()
    response = await submit(_timeout(86_399, 999_999_999), metadata=ALICE, timeout=10)
    waits = response.job.deadline.ToDatetime() - response.job.create_time.ToDatetime()
    assert 86_399 <= waits.total_seconds() < 86_400
    assert await row_count() == before + 1


BY_JOB_ID: dict[str, Any] = {
    "GetJob": jobs_service_pb2.GetJobRequest,
    "CancelJob": jobs_service_pb2.CancelJobRequest,
    "WatchJob": events_service_pb2.WatchJobRequest,
}
BAD_JOB_IDS = [
    pytest.param("", id="empty"),
    pytest.param("not-a-uuid", id="words"),
    pytest.param("x" * 1_000_000, id="a-megabyte"),
    pytest.param(f"{{{SOME_ID}}}", id="braced"),
    pytest.param(f"urn:uuid:{SOME_ID}", id="urn"),
    pytest.param(SOME_ID.replace("-", ""), id="no-dashes"),
    pytest.param(f"{SOME_ID}\n", id="trailing-newline"),
    pytest.param("\u0661" * 8 + "-" + "\u0661" * 4 + "-1111-1111-" + "1" * 12, id="arabic-digits"),
    pytest.param("'; DROP TABLE jobs; --", id="sql"),
]


@pytest.mark.parametrize("job_id", BAD_JOB_IDS)
@pytest.mark.parametrize("method", list(BY_JOB_ID))
async def test_a_job_id_that_is_not_a_uuid_is_invalid_argument(
    channels: dict[str, grpc.aio.Channel], method: str, job_id: str
) -> None:
    error = await call(channels, method, BY_JOB_ID[method](job_id=job_id))
    assert_invalid(error, "job_id")
    assert all(len(description) < 1_000 for description in error.violations.values())


@pytest.mark.parametrize("method", list(BY_JOB_ID))
async def test_a_well_formed_unknown_job_id_is_not_found(
    channels: dict[str, grpc.aio.Channel], method: str
) -> None:
    error = await call(channels, method, BY_JOB_ID[method](job_id=str(uuid.uuid4())))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        pytest.param(
            jobs_service_pb2.ListJobsRequest(page_size=-1), "page_size", id="size-minus-1"
        ),
        pytest.param(
            jobs_service_pb2.ListJobsRequest(page_size=-(2**31)), "page_size", id="size-int32-min"
        ),
        pytest.param(jobs_service_pb2.ListJobsRequest(state=STATE(99)), "state", id="state-99"),
        pytest.param(
            jobs_service_pb2.ListJobsRequest(state=STATE(-1)), "state", id="state-minus-1"
        ),
    ],
)
async def test_list_fields_out_of_range_are_invalid_argument(
    channels: dict[str, grpc.aio.Channel], request_: jobs_service_pb2.ListJobsRequest, field: str
) -> None:
    assert_invalid(await call(channels, "ListJobs", request_), field)


@pytest.mark.parametrize("after", ["garbage", "-1", "1-", "1-1-1", "0x10-0", " 1-0"])
async def test_a_malformed_resume_token_is_invalid_argument(
    channels: dict[str, grpc.aio.Channel], after: str
) -> None:
    request = events_service_pb2.WatchJobRequest(job_id=str(uuid.uuid4()), after_event_id=after)
    assert_invalid(await call(channels, "WatchJob", request), "after_event_id")


async def test_an_unexpected_failure_is_internal_and_says_nothing_of_it(
    channels: dict[str, grpc.aio.Channel], jobs_app: JobsApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("secret: the password is hunter2")

    monkeypatch.setattr(jobs_app.servicer.store, "get", broken)
    error = await call(channels, "GetJob", jobs_service_pb2.GetJobRequest(job_id=SOME_ID))
    assert (error.code, error.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert error.message == "internal error"
    assert "hunter2" not in repr(error)
    assert "RuntimeError" not in repr(error)
