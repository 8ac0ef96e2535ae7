"""Fetching generated images: `file://` from disk, `https://` over HTTP. Blocking."""

from __future__ import annotations

import calendar
import hashlib
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from darkroom.v1 import job_pb2
from darkroom_client.errors import OutputError


def _read_url(url: str, timeout: float) -> bytes:
    shown = url.split("?", maxsplit=1)[0]  # a signed URL's query is a secret
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked
            data: bytes = response.read()
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's connection
        raise OutputError(f"cannot fetch {shown}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise OutputError(f"cannot fetch {shown}: {exc}") from exc
    return data


def fetch_output(output: job_pb2.JobOutput, timeout: float = 60.0) -> bytes:
    """The bytes of one output, checked against its recorded SHA-256."""
    source = output.url or output.uri
    parts = urlsplit(source)
    if parts.scheme == "file":
        try:
            data = Path(unquote(parts.path)).read_bytes()
        except OSError as exc:
            raise OutputError(f"cannot read {source}: {exc}") from exc
    elif parts.scheme in {"https", "http"}:
        data = _read_url(source, timeout)
    elif parts.scheme == "gs":
        raise OutputError(
            f"output {output.index} is at {output.uri}, but the server gave no URL to fetch "
            "it from (its storage credentials cannot sign URLs); read it with Google Cloud "
            "Storage credentials instead"
        )
    else:
        raise OutputError(f"output {output.index} has an unsupported address {source!r}")
    if output.sha256 and hashlib.sha256(data).hexdigest() != output.sha256:
        raise OutputError(
            f"output {output.index} from {parts.scheme}:// does not match its SHA-256"
        )
    return data


def fetch_outputs(job: job_pb2.Job, timeout: float = 60.0) -> list[bytes]:
    """The bytes of every output of a succeeded job, in index order."""
    return [fetch_output(output, timeout) for output in sorted(job.outputs, key=_index)]


def _index(output: job_pb2.JobOutput) -> int:
    return output.index


def url_expires_at(url: str) -> float | None:
    """When a signed URL stops working (Unix time): GCS V4 (`X-Goog-Date` +
    `X-Goog-Expires`) or V2 (`Expires`); `inf` for a URL without a query (a file or a
    plain address); None when a query does not say."""
    query = urlsplit(url).query
    if not query:
        return float("inf")
    params = {key.lower(): values[0] for key, values in parse_qs(query).items()}
    try:
        if "x-goog-date" in params and "x-goog-expires" in params:
            signed = time.strptime(params["x-goog-date"], "%Y%m%dT%H%M%SZ")
            return calendar.timegm(signed) + int(params["x-goog-expires"])
        if "expires" in params:
            return float(params["expires"])
    except ValueError:
        return None
    return None


def outputs_fetchable(job: job_pb2.Job, for_seconds: float = 60.0) -> bool:
    """Whether every output's address still works `for_seconds` from now."""
    deadline = time.time() + for_seconds
    for output in job.outputs:
        expires = url_expires_at(output.url or output.uri)
        if expires is None or expires < deadline:
            return False
    return True
