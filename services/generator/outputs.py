"""Turning an attempt's images into stored PNGs at their deterministic keys."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

from PIL import Image, PngImagePlugin

from darkroom.models import JobRecord
from darkroom.storage import ObjectExistsError, Storage, sha256_hex

CONTENT_TYPE = "image/png"


class LeaseLostError(Exception):
    """This attempt no longer holds the job."""


def png_bytes(image: Image.Image, row: JobRecord, seed: int, model_version: str) -> bytes:
    """The image as PNG with text metadata; the same pixels always give the same bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text("darkroom:prompt_sha256", row.prompt_sha256)
    info.add_text("darkroom:seed", str(seed))
    info.add_text("darkroom:model", row.model)
    info.add_text("darkroom:model_version", model_version)
    info.add_text("darkroom:steps", str(row.steps))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


async def _put(
    storage: Storage,
    key: str,
    data: bytes,
    holds_job: Callable[[], Awaitable[bool]],
    created: list[str],
) -> str:
    # Checked (and the lease renewed) before every write: an attempt that lost the job
    # writes nothing more.
    if not await holds_job():
        raise LeaseLostError
    try:
        uri = await storage.create(key, data, CONTENT_TYPE)
    except ObjectExistsError as exists:
        # An earlier attempt got this far. The same bytes: keep its object. Other bytes
        # (another device or library build): replace exactly that object, and only while
        # this attempt still holds the job, so a zombie never overwrites.
        if sha256_hex(await storage.read(exists.uri)) == sha256_hex(data):
            return exists.uri
        return await storage.replace(key, data, CONTENT_TYPE, exists.generation)
    created.append(uri)
    return uri


async def store_images(
    storage: Storage,
    row: JobRecord,
    images: list[Image.Image],
    *,
    seeds: list[int],
    model_version: str,
    holds_job: Callable[[], Awaitable[bool]],
    created: list[str],
) -> list[dict[str, Any]]:
    """Store every image at `jobs/{job_id}/{index}.png`; the outputs to record on the row.
    `holds_job` is asked before each write (`LeaseLostError` when it says no); the URIs of
    the objects this call created (not those it found and kept) go to `created`."""
    outputs = []
    for index, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        data = await asyncio.to_thread(png_bytes, image, row, seed, model_version)
        uri = await _put(storage, f"jobs/{row.id}/{index}.png", data, holds_job, created)
        outputs.append(
            {
                "index": index,
                "uri": uri,
                "width": image.width,
                "height": image.height,
                "content_type": CONTENT_TYPE,
                "sha256": sha256_hex(data),
                "seed": seed,
            }
        )
    return outputs
