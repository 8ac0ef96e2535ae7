"""A job's images: streamed from the local storage folder, or a redirect to a signed URL.

Only the job's owner gets them: the job is read as the caller first (another owner's
job is NOT_FOUND). Outputs are create-only at deterministic keys, so a local one is
cached for good (privately: it is one owner's).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import grpc
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from darkroom.services.gateway.errors import error_response
from darkroom.services.gateway.handlers import authenticated
from darkroom.services.gateway.session import Caller
from darkroom.services.gateway.state import gateway_of

IMMUTABLE = "private, max-age=31536000, immutable"


def _missing(message: str, reason: str = "OUTPUT_NOT_FOUND") -> Response:
    return error_response(grpc.StatusCode.NOT_FOUND, message, reason=reason)


def _local_file(uri: str, root: Path | None) -> Path | None:
    """The file a `file://` URI names, if it lies in the storage folder we may serve."""
    path = Path(unquote(urlsplit(uri).path)).resolve()
    if root is None or not path.is_relative_to(root):
        return None
    return path if path.is_file() else None


@authenticated
async def job_output(request: Request, caller: Caller) -> Response:
    """GET /v1/jobs/{job_id}/outputs/{index}: the PNG bytes, or a redirect to them."""
    gateway = gateway_of(request)
    job_id, index = request.path_params["job_id"], request.path_params["index"]
    job = await gateway.client.get(job_id)
    output = next((o for o in job.outputs if o.index == index), None)
    if output is None:
        return _missing(f"job {job_id} has no output {index}")
    scheme = urlsplit(output.uri).scheme
    if scheme == "file":
        path = _local_file(output.uri, gateway.storage_root)
        if path is None:
            return _missing(f"output {index} of job {job_id} is not in this gateway's storage")
        headers = {"Cache-Control": IMMUTABLE}
        if output.sha256:
            headers["ETag"] = f'"{output.sha256}"'
        return FileResponse(path, media_type=output.content_type or "image/png", headers=headers)
    if output.url.startswith(("https://", "http://")):
        # A signed URL expires: the redirect itself must not be cached.
        return RedirectResponse(output.url, status_code=307, headers={"Cache-Control": "no-store"})
    return error_response(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"output {index} is at {output.uri}, and the storage gave no URL for it",
        reason="OUTPUT_NOT_SIGNED",
    )
