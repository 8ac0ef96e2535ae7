"""Generated images in Google Cloud Storage, through the real client against an emulator."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs
from google.oauth2 import service_account
from PIL import Image

from darkroom import devservers
from darkroom.storage import GcsStorage
from darkroom.v1 import job_pb2
from tests.services.generator.conftest import StackFactory

BUCKET = "darkroom-test"


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    port = devservers.free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def emulated(emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    return emulator


def _client() -> Any:
    return gcs.Client(project="darkroom-test", credentials=AnonymousCredentials())


async def test_outputs_land_in_gcs(make_stack: StackFactory, emulated: str) -> None:
    stack = await make_stack(storage_url=f"gs://{BUCKET}/outputs", gcs_project="darkroom-test")
    job = await stack.wait(
        (await stack.caller.submit(width=64, height=64, steps=2, num_images=2, seed=5)).job.id
    )
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    bucket = _client().bucket(BUCKET)
    for output in job.outputs:
        assert output.uri == f"gs://{BUCKET}/outputs/jobs/{job.id}/{output.index}.png"
        # Anonymous credentials cannot sign: no URL rather than a broken one.
        assert output.url == ""
        blob = bucket.get_blob(f"outputs/jobs/{job.id}/{output.index}.png")
        assert blob is not None
        assert blob.content_type == "image/png"
        data = blob.download_as_bytes()
        assert hashlib.sha256(data).hexdigest() == output.sha256
        assert Image.open(io.BytesIO(data)).size == (64, 64)


def _service_account_info() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "darkroom-test",
        "private_key_id": "local",
        "private_key": pem,
        "client_email": "darkroom@darkroom-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def test_signed_url_when_credentials_can_sign(emulated: str) -> None:
    credentials = service_account.Credentials.from_service_account_info(_service_account_info())
    client = gcs.Client(project="darkroom-test", credentials=credentials)
    storage = GcsStorage(client, BUCKET, signed_url_ttl=timedelta(minutes=5))
    url = storage.url_for(f"gs://{BUCKET}/jobs/x/0.png")
    query = parse_qs(urlsplit(url).query)
    assert urlsplit(url).path.endswith(f"/{BUCKET}/jobs/x/0.png")
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["300"]
    assert query["X-Goog-Signature"][0]
