"""Fetching outputs (`file://`, HTTP, `gs://` without a URL), and the spec helpers."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkroom.v1 import job_pb2
from darkroom_client import OutputError
from darkroom_client.jobs import build_spec, output_paths, parse_state
from darkroom_client.outputs import fetch_output

PNG = b"\x89PNG\r\n\x1a\n pretend image"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/jobs/0.png"):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(PNG)
        else:
            self.send_error(403, "signature expired")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _output(uri: str, url: str = "", data: bytes = PNG) -> job_pb2.JobOutput:
    return job_pb2.JobOutput(uri=uri, url=url, sha256=hashlib.sha256(data).hexdigest())


def test_file_outputs_are_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "a b" / "0.png"
    path.parent.mkdir()
    path.write_bytes(PNG)
    uri = path.as_uri()
    assert fetch_output(_output(uri, uri)) == PNG
    with pytest.raises(OutputError, match="SHA-256"):
        fetch_output(_output(uri, uri, data=b"other"))
    with pytest.raises(OutputError, match="cannot read"):
        fetch_output(_output((tmp_path / "missing.png").as_uri()))


def test_signed_urls_are_fetched_over_http(http_base: str) -> None:
    output = _output("gs://bucket/jobs/0.png", f"{http_base}/jobs/0.png?X-Goog-Signature=abc")
    assert fetch_output(output) == PNG
    with pytest.raises(OutputError, match="403") as raised:
        fetch_output(_output("gs://bucket/jobs/1.png", f"{http_base}/jobs/1.png?sig=secret"))
    assert "secret" not in str(raised.value)  # the signature stays out of messages


def test_gs_output_without_a_url_is_a_clear_error() -> None:
    with pytest.raises(OutputError, match="no URL"):
        fetch_output(_output("gs://bucket/jobs/0.png"))


def test_spec_state_and_path_helpers() -> None:
    spec = build_spec("p", {"width": 64, "seed": 0, "guidance_scale": None})
    assert (spec.prompt, spec.width, spec.seed) == ("p", 64, 0)
    assert spec.HasField("seed")
    assert not spec.HasField("guidance_scale")
    with pytest.raises(TypeError, match="colour"):
        build_spec("p", {"colour": "red"})

    assert parse_state("queued") == job_pb2.JOB_STATE_QUEUED
    assert parse_state("JOB_STATE_FAILED") == job_pb2.JOB_STATE_FAILED
    assert parse_state(None) == job_pb2.JOB_STATE_UNSPECIFIED
    with pytest.raises(ValueError, match="unknown job state"):
        parse_state("done")

    assert output_paths("out.png", 1) == [Path("out.png")]
    assert output_paths("dir/out.png", 2) == [Path("dir/out-0.png"), Path("dir/out-1.png")]
    assert output_paths("out", 2) == [Path("out-0.png"), Path("out-1.png")]
