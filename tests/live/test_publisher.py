"""The publisher's coalescing window (``EVENT_COALESCE_MS``, jobs/events.py) against the real Redis
channel layer: events published within the window leave together, in order, and ``flush()`` sends what
is pending at once, without waiting for the window (a worker child flushes before it kills itself)."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from jobs import events


def body(task_id: str, seq: int) -> events.TaskEventPayload:
    return {"event": "task.progress", "seq": seq, "task_id": task_id, "status": "RUNNING", "percent": float(seq)}


def received(group: str, act: Callable[[], None], messages: int, timeout: float = 5.0) -> list[dict]:
    """Listen on ``group`` (a channel of the pub/sub layer exists in its own event loop), run ``act``
    (synchronous, as the views and workers publish), and return the first ``messages`` messages."""
    async def scenario() -> list[dict]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        act()
        return [await asyncio.wait_for(layer.receive(channel), timeout) for _ in range(messages)]

    return async_to_sync(scenario)()


def received_events(group: str, act: Callable[[], None], events_wanted: int, timeout: float = 30.0,
                    quiet: float = 0.5) -> list[dict]:
    """Like ``received``, but counting events, not messages: every message on ``group`` until
    ``events_wanted`` events have come (however many sends carried them), then any that follow within
    ``quiet`` seconds (a duplicate, an extra)."""
    async def scenario() -> list[dict]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        act()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        got: list[dict] = []
        while sum(len(payloads(m)) for m in got) < events_wanted:
            got.append(await asyncio.wait_for(layer.receive(channel), max(0.0, deadline - loop.time())))
        while True:
            try:
                got.append(await asyncio.wait_for(layer.receive(channel), quiet))
            except asyncio.TimeoutError:
                return got

    return async_to_sync(scenario)()


def payloads(message: dict) -> list[dict]:
    return [message["payload"]] if message["type"] == "task.event" else message["payloads"]


def test_events_published_within_the_window_leave_together_in_order(settings):
    # A window far longer than the two publishes take, even when a busy machine stalls this thread.
    window = 3.0
    settings.CONVEYOR = {**settings.CONVEYOR, "EVENT_COALESCE_MS": window * 1000}
    task_id = str(uuid.uuid4())
    start = time.monotonic()

    def act() -> None:
        events.publisher.publish([(1, body(task_id, 2))])
        events.publisher.publish([(1, body(task_id, 3)), (1, body(task_id, 4))])

    [message] = received(events.task_group(task_id), act, 1, timeout=15)
    assert time.monotonic() - start >= window - 0.05  # held for the window, not sent at the first publish
    assert message["type"] == "task.events"
    assert [p["seq"] for p in payloads(message)] == [2, 3, 4]


def test_flush_sends_what_is_pending_without_waiting_for_the_window(settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "EVENT_COALESCE_MS": 60_000.0}
    task_id = str(uuid.uuid4())

    def act() -> None:
        events.publisher.publish([(1, body(task_id, 2))])
        events.publisher.flush()

    [message] = received(events.task_group(task_id), act, 1, timeout=2)
    assert [p["seq"] for p in payloads(message)] == [2]


def test_with_no_window_each_event_still_arrives_once(settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "EVENT_COALESCE_MS": 0.0}
    task_id = str(uuid.uuid4())

    def act() -> None:
        for seq in (2, 3, 4):
            events.publisher.publish([(1, body(task_id, seq))])
            time.sleep(0.05)

    # Three events, in order and once each; how many sends carry them is the publisher thread's
    # business (one that falls behind sends what is pending together).
    got = [p["seq"] for message in received_events(events.task_group(task_id), act, 3) for p in payloads(message)]
    assert got == [2, 3, 4]
