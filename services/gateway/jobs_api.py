"""REST/JSON for jobs: create, get, list, cancel, each one call of our client."""

from __future__ import annotations

import json
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkroom.services.gateway.errors import invalid
from darkroom.services.gateway.handlers import as_json, authenticated
from darkroom.services.gateway.session import Caller
from darkroom.services.gateway.specs import read_submit
from darkroom.services.gateway.state import gateway_of
from darkroom_client.errors import FieldViolation

IDEMPOTENCY_HEADER = "idempotency-key"
# Request ids are UUIDs (AIP-155); any other Idempotency-Key names one in this namespace.
KEY_NAMESPACE = uuid.UUID("6f1d2c3e-9a4b-5c6d-8e7f-0a1b2c3d4e5f")
MAX_KEY_CHARS = 256
MAX_BODY_BYTES = 64 * 1024


async def _json_body(request: Request) -> object:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ValueError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None


def request_id_for(key: str) -> str:
    """The request id of an Idempotency-Key: itself when it is a UUID, else one derived
    from it (the same key always gives the same id)."""
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return str(uuid.uuid5(KEY_NAMESPACE, key))


@authenticated
async def create_job(request: Request, caller: Caller) -> Response:
    """POST /v1/jobs: submit; `Idempotency-Key` is the request id (a new one when absent)."""
    try:
        body = read_submit(await _json_body(request))
    except ValueError as exc:
        return invalid([FieldViolation("", str(exc))], str(exc))
    if body.violations:
        return invalid(body.violations)
    key = request.headers.get(IDEMPOTENCY_HEADER) or str(uuid.uuid4())
    if len(key) > MAX_KEY_CHARS:
        return invalid([FieldViolation("Idempotency-Key", f"at most {MAX_KEY_CHARS} characters")])
    request_id = request_id_for(key)
    try:
        job = await gateway_of(request).client.submit(
            body.prompt,
            request_id=request_id,
            queue_timeout=body.queue_timeout,
            **body.fields,
        )
    except TypeError as exc:  # a contract field the client does not take yet
        return invalid([FieldViolation("spec", str(exc))])
    return JSONResponse(
        as_json(job),
        status_code=201,
        headers={"Location": f"/v1/jobs/{job.id}", "Idempotency-Key": key},
    )


@authenticated
async def get_job(request: Request, caller: Caller) -> Response:
    """GET /v1/jobs/{job_id}."""
    job = await gateway_of(request).client.get(request.path_params["job_id"])
    return JSONResponse(as_json(job))


@authenticated
async def list_jobs(request: Request, caller: Caller) -> Response:
    """GET /v1/jobs?page_size=&page_token=&state=: the caller's jobs, newest first."""
    query = request.query_params
    violations = []
    page_size = 0
    if query.get("page_size"):
        try:
            page_size = int(query["page_size"])
        except ValueError:
            violations.append(FieldViolation("page_size", "must be a whole number"))
    state = query.get("state") or None
    if violations:
        return invalid(violations)
    try:
        page = await gateway_of(request).client.list(
            state=state, page_size=page_size, page_token=query.get("page_token", "")
        )
    except ValueError as exc:  # an unknown state name, said by the client
        return invalid([FieldViolation("state", str(exc))])
    return JSONResponse(as_json(page))


@authenticated
async def cancel_job(request: Request, caller: Caller) -> Response:
    """POST /v1/jobs/{job_id}:cancel."""
    job = await gateway_of(request).client.cancel(request.path_params["job_id"])
    return JSONResponse(as_json(job))
