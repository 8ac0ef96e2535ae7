"""Image bytes: streamed from local storage with immutable caching, to the owner only."""

from __future__ import annotations

import asyncio
import hashlib
import io

from PIL import Image

from tests.services.gateway.conftest import FrontFactory, spec


async def test_the_owner_gets_the_png_with_caching_headers(make_front: FrontFactory) -> None:
    front = await make_front()
    async with front.http() as alice, front.http("bob-token") as bob:
        job = (await alice.post("/v1/jobs", json=spec("bytes", num_images=2))).json()
        async with asyncio.timeout(20):
            while (job := (await alice.get(f"/v1/jobs/{job['id']}")).json())[
                "state"
            ] != "JOB_STATE_SUCCEEDED":
                await asyncio.sleep(0.05)
        for output in job["outputs"]:
            index = output.get("index", 0)
            image = await alice.get(f"/v1/jobs/{job['id']}/outputs/{index}")
            assert image.status_code == 200
            assert image.headers["content-type"] == "image/png"
            assert "immutable" in image.headers["cache-control"]
            assert "private" in image.headers["cache-control"]
            assert image.headers["etag"] == f'"{output["sha256"]}"'
            assert hashlib.sha256(image.content).hexdigest() == output["sha256"]
            with Image.open(io.BytesIO(image.content)) as png:
                assert png.size == (64, 64)
        assert (await bob.get(f"/v1/jobs/{job['id']}/outputs/0")).status_code == 404
        missing = await alice.get(f"/v1/jobs/{job['id']}/outputs/5")
        assert missing.status_code == 404
        assert missing.json()["error"]["reason"] == "OUTPUT_NOT_FOUND"
