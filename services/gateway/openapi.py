"""The OpenAPI 3.1 document of the gateway's HTTP API, served at `/openapi.json`.

Jobs and events are the contract's messages in proto JSON (proto field names, enums by
name): the schemas here name their main fields and leave the rest open, so that fields
added to the contract need no change here. A test checks that every route is described.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/Error{status}"} for status in statuses}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The job's id.",
}
ERROR_STATUSES = {
    400: "Invalid request: `field_violations` says what is wrong with which field.",
    401: "No token, or an unknown one.",
    403: "A cookie request without its CSRF token, or from another origin.",
    404: "No such job for this caller (another owner's job looks the same).",
    409: "The idempotency key was used for a different request.",
    429: "A limit was reached; `Retry-After` says when to try again, when known.",
    503: "A service the gateway calls is unavailable; retry.",
}

SCHEMAS: dict[str, Any] = {
    "JobSpec": {
        "type": "object",
        "description": "What to generate (darkroom.v1.JobSpec); unset fields take defaults.",
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string"},
            "negative_prompt": {"type": "string"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "steps": {"type": "integer"},
            "guidance_scale": {"type": "number"},
            "seed": {"type": ["integer", "string"]},
            "num_images": {"type": "integer"},
            "model": {"type": "string"},
        },
        "additionalProperties": True,
    },
    "CreateJob": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": _ref("JobSpec"),
            "queue_timeout": {"type": "string", "description": 'How long it may queue, "60s".'},
        },
        "additionalProperties": False,
    },
    "Job": {
        "type": "object",
        "description": "darkroom.v1.Job in proto JSON; zero values are left out.",
        "properties": {
            "id": {"type": "string"},
            "owner": {"type": "string"},
            "request_id": {"type": "string"},
            "state": {"type": "string", "examples": ["JOB_STATE_QUEUED"]},
            "spec": _ref("JobSpec"),
            "progress": {"type": "object"},
            "outputs": {"type": "array", "items": {"type": "object"}},
            "error": {"type": "object"},
        },
        "additionalProperties": True,
    },
    "JobList": {
        "type": "object",
        "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "next_page_token": {"type": "string"},
        },
    },
    "JobEvent": {
        "type": "object",
        "description": (
            "darkroom.v1.JobEvent in proto JSON: `event_id`, `job_id`, `time` and one "
            "key named after its kind (snapshot, queued, started, progress, retrying, "
            "succeeded, failed, cancelled, and any kind the contract adds)."
        ),
        "properties": {
            "event_id": {"type": "string"},
            "job_id": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
        },
        "additionalProperties": True,
    },
    "SignIn": {
        "type": "object",
        "required": ["token"],
        "properties": {"token": {"type": "string"}},
    },
    "Session": {
        "type": "object",
        "required": ["signed_in"],
        "properties": {"signed_in": {"type": "boolean"}, "csrf_token": {"type": "string"}},
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "reason", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["INVALID_ARGUMENT"]},
                    "status": {"type": "integer"},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "field_violations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "field": {"type": "string"},
                                "description": {"type": "string"},
                            },
                        },
                    },
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            }
        },
    },
}

PATHS: dict[str, Any] = {
    "/v1/session": {
        "get": {
            "operationId": "getSession",
            "summary": "Whether this browser is signed in, and its CSRF token.",
            "security": [],
            "responses": {"200": _json(_ref("Session"), "The session.")},
        },
        "post": {
            "operationId": "signIn",
            "summary": "Sign a browser in with a token: sets the session cookie.",
            "security": [],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("SignIn")}}},
            "responses": {
                "200": _json(_ref("Session"), "Signed in; keep `csrf_token` for changes."),
                **_errors(400, 401, 403),
            },
        },
        "delete": {
            "operationId": "signOut",
            "summary": "Sign out: clears the session cookie.",
            "responses": {"200": _json(_ref("Session"), "Signed out."), **_errors(403)},
        },
    },
    "/v1/jobs": {
        "post": {
            "operationId": "createJob",
            "summary": "Submit a job; it is QUEUED and runs later.",
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "schema": {"type": "string"},
                    "description": "The request id: a repeat returns the first job.",
                }
            ],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("CreateJob")}}},
            "responses": {
                "201": _json(_ref("Job"), "The job as recorded."),
                **_errors(400, 401, 403, 409, 429, 503),
            },
        },
        "get": {
            "operationId": "listJobs",
            "summary": "The caller's jobs, newest first.",
            "parameters": [
                {"name": "page_size", "in": "query", "schema": {"type": "integer"}},
                {"name": "page_token", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "state",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "queued, running, succeeded, failed or cancelled.",
                },
            ],
            "responses": {"200": _json(_ref("JobList"), "One page."), **_errors(400, 401, 503)},
        },
    },
    "/v1/jobs/{job_id}": {
        "get": {
            "operationId": "getJob",
            "summary": "One of the caller's jobs.",
            "parameters": [JOB_ID],
            "responses": {"200": _json(_ref("Job"), "The job."), **_errors(401, 404, 503)},
        }
    },
    "/v1/jobs/{job_id}:cancel": {
        "post": {
            "operationId": "cancelJob",
            "summary": "Cancel a job (a running one stops at its next step).",
            "parameters": [JOB_ID],
            "responses": {
                "200": _json(_ref("Job"), "The job."),
                **_errors(400, 401, 403, 404, 503),
            },
        }
    },
    "/v1/jobs/{job_id}/events": {
        "get": {
            "operationId": "streamJobEvents",
            "summary": "The job's events as server-sent events, to its terminal event.",
            "description": (
                "Each SSE `event:` is the event's kind, `id:` its event id and `data:` the "
                "JobEvent as JSON. Resume with `Last-Event-ID` (or `after`). Comments keep "
                "an idle stream open."
            ),
            "parameters": [
                JOB_ID,
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                {"name": "after", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_errors(401, 404, 503),
            },
        }
    },
    "/v1/jobs/{job_id}/ws": {
        "get": {
            "operationId": "watchJobWebSocket",
            "summary": 'The job\'s events over a WebSocket (send `{"after_event_id": ""}` first).',
            "parameters": [JOB_ID],
            "responses": {"101": {"description": "Switching to the WebSocket protocol."}},
        }
    },
    "/v1/jobs/{job_id}/outputs/{index}": {
        "get": {
            "operationId": "getJobOutput",
            "summary": "An image's bytes (local storage) or a redirect to its signed URL.",
            "parameters": [
                JOB_ID,
                {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}},
            ],
            "responses": {
                "200": {"description": "The PNG.", "content": {"image/png": {}}},
                "307": {"description": "Redirect to the signed URL."},
                **_errors(401, 404),
            },
        }
    },
}


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Darkroom HTTP gateway",
            "version": "1",
            "description": "Text-to-image jobs over HTTP: REST/JSON, server-sent events.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                f"Error{status}": _json(_ref("Error"), description)
                for status, description in ERROR_STATUSES.items()
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "darkroom_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }
