"""Storage adapters: create-only semantics, and how a 412 from GCS is reported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as google_errors

from darkroom.storage import GcsStorage, LocalStorage, ObjectExistsError, StorageError, open_storage


async def test_local_create_is_create_only_and_replace_needs_the_generation(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    uri = await storage.create("jobs/a/0.png", b"first", "image/png")
    assert uri == (tmp_path / "jobs/a/0.png").as_uri()
    with pytest.raises(ObjectExistsError) as exists:
        await storage.create("jobs/a/0.png", b"second", "image/png")
    assert await storage.read(uri) == b"first"
    with pytest.raises(ObjectExistsError):
        await storage.replace("jobs/a/0.png", b"third", "image/png", "not-the-generation")
    assert await storage.read(uri) == b"first"
    await storage.replace("jobs/a/0.png", b"fourth", "image/png", exists.value.generation)
    assert await storage.read(uri) == b"fourth"
    assert [p.name for p in (tmp_path / "jobs/a").iterdir()] == ["0.png"]


async def test_local_keys_cannot_escape_the_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        await LocalStorage(tmp_path / "root").create("../escape.png", b"x", "image/png")


def test_open_storage_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(tmp_path.as_uri()), LocalStorage)
    with pytest.raises(StorageError):
        open_storage("s3://bucket")


class _Blob:
    def __init__(self, bucket: _Bucket, name: str) -> None:
        self.bucket, self.name, self.generation = bucket, name, 0

    def upload_from_string(self, data: bytes, *, if_generation_match: int, **_: Any) -> None:
        current = self.bucket.objects.get(self.name)
        if current is not None and current[1] != if_generation_match:
            raise google_errors.PreconditionFailed("conditionNotMet")
        self.bucket.objects[self.name] = (data, (current[1] if current else 0) + 1)


class _Bucket:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, int]] = {}

    def blob(self, name: str) -> _Blob:
        return _Blob(self, name)

    def get_blob(self, name: str, **_: Any) -> _Blob | None:
        if name not in self.objects:
            return None
        blob = _Blob(self, name)
        blob.generation = self.objects[name][1]
        return blob


class _Client:
    def __init__(self) -> None:
        self.the_bucket = _Bucket()

    def bucket(self, name: str) -> _Bucket:
        return self.the_bucket


async def test_gcs_412_becomes_object_exists_with_the_generation() -> None:
    # The emulator ignores ifGenerationMatch, so the 412 path is checked with a fake client.
    client = _Client()
    storage = GcsStorage(client, "bucket", "prefix")
    assert (
        await storage.create("jobs/a/0.png", b"one", "image/png")
        == "gs://bucket/prefix/jobs/a/0.png"
    )
    with pytest.raises(ObjectExistsError) as exists:
        await storage.create("jobs/a/0.png", b"two", "image/png")
    assert exists.value.generation == "1"
    assert client.the_bucket.objects["prefix/jobs/a/0.png"][0] == b"one"
    await storage.replace("jobs/a/0.png", b"three", "image/png", exists.value.generation)
    assert client.the_bucket.objects["prefix/jobs/a/0.png"] == (b"three", 2)


def test_a_failed_local_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    # A child process whose files may not grow past 1 KiB: the write fails as on a full
    # disk (EFBIG instead of ENOSPC), for real, inside the kernel.
    script = textwrap.dedent(
        """
        import asyncio, resource, signal, sys
        from pathlib import Path
        from darkroom.storage import LocalStorage
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
        storage = LocalStorage(Path(sys.argv[1]))
        try:
            asyncio.run(storage.create("jobs/a/0.png", b"x" * 65536, "image/png"))
        except OSError as exc:
            print("failed", exc.errno)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("failed"), done.stderr
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == []


async def test_local_delete_removes_an_object_and_ignores_a_missing_one(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    uri = await storage.create("jobs/a/0.png", b"x", "image/png")
    await storage.delete(uri)
    assert not (tmp_path / "jobs/a/0.png").exists()
    await storage.delete(uri)
    with pytest.raises(StorageError):
        await storage.delete((tmp_path.parent / "elsewhere.png").as_uri())
