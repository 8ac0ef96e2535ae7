"""The page in Chromium: sign in, submit, watch the bar, survive restarts, see the image."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio
from playwright.async_api import Browser, Page, expect

from darkroom.config import DEV_TOKEN
from darkroom.v1 import job_pb2
from tests.browser.conftest import GatewayProcess, artifact
from tests.clients.conftest import GatedPipeline, StackFactory

STEPS = 8


async def _signed_in_page(browser: Browser, gateway: GatewayProcess) -> Page:
    page = await browser.new_page()
    page.set_default_timeout(20_000)
    await page.goto(gateway.url)
    await page.get_by_label("Token").fill(DEV_TOKEN)
    await page.get_by_label("Token").press("Enter")  # the keyboard alone signs in
    await expect(page.get_by_label("Prompt")).to_be_visible()
    return page


async def _submit(page: Page, prompt: str, pipeline: GatedPipeline) -> None:
    """Submit from the page; return once the job runs and the page follows it."""
    await page.get_by_label("Prompt").fill(prompt)
    for label, value in (("Width", "64"), ("Height", "64"), ("Steps", str(STEPS)), ("Seed", "7")):
        await page.get_by_label(label, exact=True).fill(value)
    await page.get_by_role("button", name="Generate").click()
    await pipeline.wait_reached(1)
    await page.wait_for_function("() => window.darkroomEvents.length > 0")
    pipeline.release(1)


async def _bar(page: Page) -> int:
    value: Any = await page.eval_on_selector("#job-progress", "bar => bar.value")
    return int(value)


async def _wait_bar(page: Page, at_least: int) -> None:
    try:
        async with asyncio.timeout(20):
            while await _bar(page) < at_least:
                await asyncio.sleep(0.05)
    except TimeoutError:
        seen = await page.evaluate("window.darkroomEvents")
        state = await page.locator("#job-state").inner_text()
        raise AssertionError(f"the bar stayed below {at_least}: state {state}, {seen}") from None


def _key(event_id: str) -> tuple[int, int]:
    millis, _, sequence = event_id.partition("-")
    return int(millis), int(sequence)


async def _finish_and_check(
    page: Page, name: str, redis: redis.asyncio.Redis, gateway: GatewayProcess
) -> None:
    image = page.locator("#job-images img").first
    await expect(image).to_be_visible()
    await page.wait_for_function(
        "() => { const i = document.querySelector('#job-images img');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    assert await image.evaluate("i => i.naturalWidth") == 64
    await expect(page.locator("#job-state")).to_have_text("succeeded")
    assert await _bar(page) == STEPS
    events: list[dict[str, str]] = await page.evaluate("window.darkroomEvents")
    ids = [e["id"] for e in events if e["id"] and e["kind"] != "snapshot"]
    assert len(ids) == len(set(ids)), "an event arrived twice"
    kinds = [e["kind"] for e in events]
    # The end comes once: the terminal event, or a snapshot of the finished job when the
    # watch resumed after it (an Events service answers a finished job from its row).
    assert kinds.count("succeeded") <= 1
    assert kinds[-1] in {"succeeded", "snapshot"}
    assert "progress" in kinds
    # Nothing missed: every event logged after what the first snapshot covered reached the
    # page, in order, across the restart (a later snapshot covers what it says it covers;
    # one of the finished job, sent when a watch resumed after the end, covers all).
    job_id = events[0]["job"]
    logged = await redis.xrange(gateway.stack.settings.keys.events(job_id))
    covered = _key(events[0]["id"])
    later = [_key(e["id"]) for e in events[1:] if e["kind"] == "snapshot" and e["id"]]
    if kinds[-1] == "snapshot":  # the finished job itself: it covers everything
        later.append((2**64, 0))
    expected = [i.decode() for i, _ in logged if _key(i.decode()) > covered]
    missed = [i for i in expected if i not in ids and not any(_key(i) <= s for s in later)]
    assert not missed, (missed, events)
    assert ids == sorted(ids, key=_key)
    assert set(ids) <= set(expected)
    await page.screenshot(path=artifact(name), full_page=True)


async def test_submit_watch_and_see_the_image_across_a_gateway_restart(
    browser: Browser,
    gateway_process: tuple[GatewayProcess, GatedPipeline],
    redis_client: redis.asyncio.Redis,
) -> None:
    gateway, pipeline = gateway_process
    page = await _signed_in_page(browser, gateway)
    await _submit(page, "a lighthouse at dusk", pipeline)
    await pipeline.wait_reached(3)
    await _wait_bar(page, 3)
    assert "Step 3 of 8" in await page.locator("#job-status").inner_text()
    await gateway.kill()
    await gateway.start()  # the same port: the page's EventSource reconnects to it
    await asyncio.sleep(0.3)
    pipeline.release(3)
    await _finish_and_check(page, "gateway-restart.png", redis_client, gateway)
    recent = page.locator("#recent li")
    await expect(recent.first).to_contain_text("a lighthouse at dusk")


async def test_the_page_resumes_across_an_events_restart(
    browser: Browser,
    gateway_process: tuple[GatewayProcess, GatedPipeline],
    redis_client: redis.asyncio.Redis,
) -> None:
    gateway, pipeline = gateway_process
    page = await _signed_in_page(browser, gateway)
    await _submit(page, "a harbour in fog", pipeline)
    await pipeline.wait_reached(3)
    await _wait_bar(page, 3)
    await gateway.stack.restart_events()
    pipeline.release(3)
    await _finish_and_check(page, "events-restart.png", redis_client, gateway)


async def test_field_errors_show_beside_their_fields(
    browser: Browser, gateway_process: tuple[GatewayProcess, GatedPipeline]
) -> None:
    gateway, _ = gateway_process
    page = await _signed_in_page(browser, gateway)
    await page.get_by_label("Prompt").fill("bad sizes")
    await page.get_by_label("Width", exact=True).fill("65")
    await page.get_by_label("Steps", exact=True).fill("100000")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#error-width")).not_to_be_empty()
    await expect(page.locator("#error-steps")).not_to_be_empty()
    assert await page.get_by_label("Width", exact=True).get_attribute("aria-invalid") == "true"


async def test_queue_position_and_eta_render_when_events_carry_them(
    browser: Browser, gateway_process: tuple[GatewayProcess, GatedPipeline]
) -> None:
    # The scheduling work adds Job.queue and a `position` event kind; the page renders them
    # when they come (fed here as the gateway would pass them through) and ignores kinds
    # it does not know.
    gateway, _ = gateway_process
    page = await _signed_in_page(browser, gateway)
    await page.evaluate(
        """() => {
        const soon = new Date(Date.now() + 30000).toISOString();
        const later = new Date(Date.now() + 60000).toISOString();
        render("position", {position: {queue: {reason: "WAIT_REASON_QUEUED", jobs_ahead: 2,
            workers: 1, estimated_start_time: soon, estimated_end_time: later,
            detail: "queued behind 2 jobs"}}});
    }"""
    )
    text = await page.locator("#job-queue").inner_text()
    assert "position 3" in text
    assert "starts in about" in text
    assert "done in about" in text
    assert "queued behind 2 jobs" in text
    await expect(page.locator("#job-state")).to_have_text("queued")
    # Proto JSON leaves jobs_ahead out when it is 0: the job is next.
    await page.evaluate(
        """() => render("snapshot", {snapshot: {job: {id: "j", state: "JOB_STATE_QUEUED",
        queue: {reason: "WAIT_REASON_QUEUED"}}}})"""
    )
    await expect(page.locator("#job-queue")).to_have_text("(position 1)")
    await page.evaluate(
        """() => render("position", {position: {queue: {reason: "WAIT_REASON_NO_WORKER"}}})"""
    )
    await expect(page.locator("#job-queue")).to_have_text("(waiting for a worker)")
    await page.evaluate(
        """() => render("progress", {progress: {progress: {step: 2, total_steps: 4}}})"""
    )
    await expect(page.locator("#job-status")).to_have_text("Step 2 of 4")
    await expect(page.locator("#job-queue")).to_have_text("")


async def test_a_job_without_a_worker_says_so(browser: Browser, make_stack: StackFactory) -> None:
    stack = await make_stack(generator=False)
    gateway = GatewayProcess(stack)
    await gateway.start()
    try:
        page = await _signed_in_page(browser, gateway)
        await page.get_by_label("Prompt").fill("nobody serves this")
        await page.get_by_role("button", name="Generate").click()
        await expect(page.locator("#job-state")).to_have_text("queued")
        if "queue" in job_pb2.Job.DESCRIPTOR.fields_by_name:
            await expect(page.locator("#job-queue")).to_contain_text("waiting for a worker")
        # Cancel from the keyboard.
        await page.get_by_role("button", name="Cancel", exact=True).focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#job-state")).to_have_text("cancelled")
        await expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()
    finally:
        await gateway.kill()
