"""The spec's one declaration (`darkroom.spec.Spec`) against everything built from it: a
field added there but forgotten in any mapping fails here."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from typing import Any, get_type_hints

import sqlalchemy
from sqlalchemy.dialects.postgresql import JSONB

from darkroom.config import Settings
from darkroom.convert import job_to_proto
from darkroom.inserts import INSERTED_COLUMNS
from darkroom.models import JobRow
from darkroom.services.generator.pipeline import REQUEST_FIELDS, GenerationRequest
from darkroom.spec import FIELDS, HasSpec, Spec
from darkroom.store import JobStore
from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom.validation import validate_submit
from darkroom_client.jobs import SpecFields
from tests.helpers import job_request

SPEC = Spec(
    prompt="a lighthouse",
    negative_prompt="fog",
    width=128,
    height=64,
    steps=7,
    guidance_scale=3.5,
    seed=2**32 - 2,
    num_images=3,
    model="tiny-sd",
    priority=-3,
    webhook={"url": "https://hooks.example.com/done", "events": ["WEBHOOK_EVENT_TERMINAL"]},
)


def test_the_proto_has_exactly_the_spec_fields() -> None:
    assert {field.name for field in job_pb2.JobSpec.DESCRIPTOR.fields} == set(FIELDS)


def test_the_row_and_the_insert_have_a_column_for_each_field() -> None:
    columns = sqlalchemy.inspect(JobRow).columns
    assert set(FIELDS) <= set(columns.keys())
    assert set(FIELDS) <= {column.name for column in INSERTED_COLUMNS}
    hints = get_type_hints(Spec)
    for name in FIELDS:
        if isinstance(columns[name].type, JSONB):  # the webhook: its JSON, or None
            assert hints[name] == dict[str, Any] | None, name
            continue
        assert columns[name].type.python_type is hints[name], name


def test_a_job_row_has_every_field_as_a_typed_attribute() -> None:
    members = {name for name in vars(HasSpec) if not name.startswith("_")}
    assert members == set(FIELDS)
    hints = get_type_hints(Spec)
    for name in FIELDS:
        returns = get_type_hints(getattr(HasSpec, name).fget)["return"]
        assert returns == hints[name], name


def test_the_client_takes_every_field_but_the_prompt_as_a_keyword() -> None:
    assert set(SpecFields.__annotations__) == set(FIELDS) - {"prompt"}


def test_the_pipeline_request_is_built_from_the_spec() -> None:
    assert set(REQUEST_FIELDS) == set(FIELDS) - {
        "seed",
        "num_images",
        "model",
        "priority",
        "webhook",
    } | {"seeds"}
    request = GenerationRequest.for_spec(SPEC)
    assert request.seeds == [2**32 - 2, 2**32 - 1, 0]
    assert {f.name: getattr(request, f.name) for f in fields(request) if f.name != "seeds"} == {
        name: getattr(SPEC, name) for name in REQUEST_FIELDS if name != "seeds"
    }


def test_a_submit_keeps_every_given_field(settings: Settings) -> None:
    request = jobs_service_pb2.SubmitJobRequest(
        request_id="0b6f3c9e-8d0e-4d7a-9a55-0a3d2f6f1c11", spec=SPEC.to_proto()
    )
    assert validate_submit(request, settings).spec == SPEC


async def test_a_row_reads_back_as_the_spec_it_was_written_with(store: JobStore) -> None:
    values = SPEC.values()
    request = job_request(**values, queue_timeout=timedelta(minutes=1))
    row, _ = await store.create("spec", request, max_attempts=1)
    assert Spec.of(row) == SPEC
    assert job_to_proto(row).spec == SPEC.to_proto()
