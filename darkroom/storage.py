"""Object storage for generated images: a local folder (the default) or Google Cloud Storage.

Uploads are create-only: a second write of a key raises `ObjectExistsError` carrying the
existing object's generation, so the caller decides on purpose whether to keep it or to
replace exactly that generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from google.api_core import exceptions as gcs_errors


class StorageError(Exception):
    """A storage operation failed."""


class ObjectExistsError(StorageError):
    """A create-only upload met an object that is already there."""

    def __init__(self, uri: str, generation: str) -> None:
        super().__init__(f"{uri} already exists (generation {generation})")
        self.uri = uri
        self.generation = generation


class Storage(Protocol):
    """Where images go. Keys are relative paths such as `jobs/{job_id}/0.png`."""

    async def create(self, key: str, data: bytes, content_type: str) -> str:
        """Store `data` at `key` unless something is there; return its URI."""

    async def replace(self, key: str, data: bytes, content_type: str, generation: str) -> str:
        """Overwrite `key` only if it is still at `generation`; return its URI."""

    async def read(self, uri: str) -> bytes:
        """The bytes stored at `uri`."""

    async def delete(self, uri: str) -> None:
        """Remove the object at `uri`; one that is not there is no error."""

    def url_for(self, uri: str) -> str:
        """A URL a client can fetch `uri` from, or "" when none can be made."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStorage:
    """A folder on this machine; URIs are `file://` paths."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"key {key!r} leaves the storage folder")
        return path

    @staticmethod
    def _generation(path: Path) -> str:
        stat = path.stat()
        return f"{stat.st_mtime_ns}-{stat.st_size}"

    def _write_temp(self, path: Path, data: bytes) -> Path:
        """`data` in a new temporary file beside `path`; nothing is left behind when the
        write fails (a full disk, a quota)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return Path(temp)

    def _create(self, key: str, data: bytes) -> str:
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            # link() refuses an existing name: an atomic create-only, never a torn file.
            os.link(temp, path)
        except FileExistsError:
            raise ObjectExistsError(path.as_uri(), self._generation(path)) from None
        finally:
            temp.unlink(missing_ok=True)
        return path.as_uri()

    def _replace(self, key: str, data: bytes, generation: str) -> str:
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            if path.exists() and self._generation(path) != generation:
                raise ObjectExistsError(path.as_uri(), self._generation(path))
            temp.replace(path)
        finally:
            temp.unlink(missing_ok=True)
        return path.as_uri()

    async def create(self, key: str, data: bytes, content_type: str) -> str:
        return await asyncio.to_thread(self._create, key, data)

    async def replace(self, key: str, data: bytes, content_type: str, generation: str) -> str:
        return await asyncio.to_thread(self._replace, key, data, generation)

    def _uri_path(self, uri: str) -> Path:
        path = Path(unquote(urlsplit(uri).path)).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"{uri} is not in {self.root.as_uri()}")
        return path

    async def read(self, uri: str) -> bytes:
        return await asyncio.to_thread(Path(unquote(urlsplit(uri).path)).read_bytes)

    async def delete(self, uri: str) -> None:
        await asyncio.to_thread(self._uri_path(uri).unlink, missing_ok=True)

    def url_for(self, uri: str) -> str:
        return uri


class GcsStorage:
    """A Google Cloud Storage bucket (or a prefix in one); URIs are `gs://bucket/key`."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        signed_url_ttl: timedelta = timedelta(hours=1),
        timeout: float = 30.0,
    ) -> None:
        self._client = client
        self._bucket = client.bucket(bucket)
        self._bucket_name = bucket
        self._prefix = prefix.strip("/")
        self._signed_url_ttl = signed_url_ttl
        self._timeout = timeout

    def _name(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _uri(self, name: str) -> str:
        return f"gs://{self._bucket_name}/{name}"

    def _upload(self, key: str, data: bytes, content_type: str, generation: int) -> str:
        name = self._name(key)
        blob = self._bucket.blob(name)
        try:
            blob.upload_from_string(
                data,
                content_type=content_type,
                if_generation_match=generation,
                timeout=self._timeout,
            )
        except gcs_errors.PreconditionFailed:
            existing = self._bucket.get_blob(name, timeout=self._timeout)
            current = str(existing.generation) if existing is not None else "0"
            raise ObjectExistsError(self._uri(name), current) from None
        return self._uri(name)

    async def create(self, key: str, data: bytes, content_type: str) -> str:
        return await asyncio.to_thread(self._upload, key, data, content_type, 0)

    async def replace(self, key: str, data: bytes, content_type: str, generation: str) -> str:
        return await asyncio.to_thread(self._upload, key, data, content_type, int(generation))

    def _split(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "gs" or parts.netloc != self._bucket_name:
            raise StorageError(f"{uri} is not in gs://{self._bucket_name}")
        return parts.path.lstrip("/")

    async def read(self, uri: str) -> bytes:
        blob = self._bucket.blob(self._split(uri))
        data: bytes = await asyncio.to_thread(blob.download_as_bytes, timeout=self._timeout)
        return data

    def _delete(self, uri: str) -> None:
        with contextlib.suppress(gcs_errors.NotFound):
            self._bucket.blob(self._split(uri)).delete(timeout=self._timeout)

    async def delete(self, uri: str) -> None:
        await asyncio.to_thread(self._delete, uri)

    def url_for(self, uri: str) -> str:
        """A V4 signed URL when the credentials hold a private key, else ""."""
        credentials = getattr(self._client, "_credentials", None)
        if not hasattr(credentials, "sign_bytes"):
            return ""
        blob = self._bucket.blob(self._split(uri))
        url: str = blob.generate_signed_url(
            version="v4", expiration=self._signed_url_ttl, method="GET"
        )
        return url


def open_storage(
    url: str,
    *,
    credentials_file: str = "",
    project: str = "",
    signed_url_ttl: timedelta = timedelta(hours=1),
) -> Storage:
    """Storage for `url`: a folder path or `file:///…` (local), or `gs://bucket[/prefix]`."""
    parts = urlsplit(url)
    if parts.scheme == "gs":
        from google.cloud import storage as gcs  # noqa: PLC0415 - only GCS deployments pay for it

        if credentials_file:
            client = gcs.Client.from_service_account_json(credentials_file, project=project or None)
        else:
            client = gcs.Client(project=project or None)
        return GcsStorage(client, parts.netloc, parts.path, signed_url_ttl=signed_url_ttl)
    if parts.scheme == "file":
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme == "":
        return LocalStorage(Path(url))
    raise StorageError(f"unsupported storage URL {url!r}: use a folder, file:// or gs://")
