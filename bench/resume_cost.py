"""What keeping a reply resumable costs per event (docs/api.md §9), against the same stream not resumable.

    DATABASE_URL=postgres://…/db REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.resume_cost

A measurement to read, not a test: it prints numbers and asserts nothing. Two parts:

1. **Recording alone**, 20,000 delta events of 3 characters: the time `replay.Recording.add` adds
   to each event on the turn's path, the memory a memory buffer keeps per event (tracemalloc), and
   with Redis the event loop's CPU and wall time per event when events arrive one at a time (each
   its own pipelined `XADD` + `EXPIRE`, as with a bot streaming tokens), and Redis's own memory per
   event (`MEMORY USAGE` of the stream).
2. **A whole reply through the chat service**, in process: a 400-delta reply from the built-in
   simulator (no delay between tokens, so the gateway's own work dominates) consumed through
   `service.achat_events` and rendered as SSE bytes, not resumable, resumable in memory and
   resumable in Redis, interleaved, median of the repeats: wall and CPU time per event.

Needs a migrated database (the chat service stores each turn) and, for the Redis rows, REDIS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import tracemalloc
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")

import django

django.setup()

from django.conf import settings  # noqa: E402

from chat.domain.events import DeltaEvent  # noqa: E402
from chat.resume import replay  # noqa: E402


def recording_alone(events: int, redis_url: str) -> dict:
    results = {}
    deltas = [DeltaEvent(f"t{index % 10}é") for index in range(events)]

    # Time added on the turn's path: one `add` per event (memory backend: append to a deque).
    settings.REDIS_URL = ""
    settings.CHAT_RESUME_MAX_EVENTS = events + 10
    settings.CHAT_RESUME_MAX_CHARS = events * 10
    recording = replay.Recording()
    started = time.perf_counter()
    for event in deltas:
        recording.add(event, 1)
    results["memory_add_ns"] = (time.perf_counter() - started) / events * 1e9
    replay.memory._evict(1)

    # Memory kept per event. The events are made inside the measurement: without the buffer they
    # (and their text) would be freed once sent.
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    recording = replay.Recording()
    for index in range(events):
        recording.add(DeltaEvent(f"t{index % 10}é"), 2)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    results["memory_bytes_per_event"] = kept / events
    replay.memory._evict(2)

    if redis_url:
        settings.REDIS_URL = redis_url
        results.update(asyncio.run(_redis_costs(deltas)))
    return results


async def _redis_costs(deltas: list[DeltaEvent]) -> dict:
    import redis.asyncio as aredis

    client = aredis.from_url(settings.REDIS_URL)
    pk = 900_000_001
    key = f"{replay.KEY_PREFIX}{pk}"
    await client.delete(key)
    # The turn's path: `add` encodes the event and queues it; the write happens in a task.
    recording = replay.Recording()
    started = time.perf_counter()
    for event in deltas:
        recording.add(event, pk)
    add_ns = (time.perf_counter() - started) / len(deltas) * 1e9
    await _written()
    await client.delete(key)
    # Events one at a time, each written before the next arrives: the loop's CPU and the wall time.
    sample = deltas[:5000]
    recording = replay.Recording()
    cpu, wall = time.process_time(), time.perf_counter()
    for event in sample:
        recording.add(event, pk)
        await _written()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    redis_bytes = await client.memory_usage(key, samples=0)
    await client.delete(key)
    # 200 replies in flight, each adding an event in the same moment: one pipeline for all of them.
    recordings = [replay.Recording() for _ in range(200)]
    for index, recording in enumerate(recordings):
        recording.add(sample[0], pk + 1 + index)
    await _written()
    busy_cpu, busy_wall = time.process_time(), time.perf_counter()
    for event in sample[1:26]:
        for index, recording in enumerate(recordings):
            recording.add(event, pk + 1 + index)
        await _written()
    busy = 25 * len(recordings)
    busy_cpu = (time.process_time() - busy_cpu) / busy * 1e6
    busy_wall = (time.perf_counter() - busy_wall) / busy * 1e6
    await client.delete(*(f"{replay.KEY_PREFIX}{pk + 1 + index}" for index in range(len(recordings))))
    await client.aclose()
    return {
        "redis_busy_cpu_us": busy_cpu,
        "redis_busy_wall_us": busy_wall,
        "redis_add_ns": add_ns,
        "redis_write_cpu_us": cpu / len(sample) * 1e6,
        "redis_write_wall_us": wall / len(sample) * 1e6,
        "redis_bytes_per_event": redis_bytes / len(sample),
    }


async def _written() -> None:
    """Until this loop's Redis writes so far are done."""
    flusher = replay._flusher()
    while flusher.task is not None:
        await asyncio.wait([flusher.task])


async def whole_replies(repeats: int, deltas: int, redis_url: str) -> dict:
    from chat.domain.events import PING
    from chat.domain.inputs import ChatRequest, Owner
    from chat.domain.sse import sse_event
    from chat.simulator import SimulatorConfig, SimulatorServer
    from chat.turn import service

    simulator = SimulatorServer(SimulatorConfig(token="bench-token"))
    simulator.start()
    settings.COZE_API_TOKEN = "bench-token"
    settings.COZE_BASE_URL = simulator.base_url
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 0
    settings.CHAT_MAX_CONCURRENT_STREAMS = 0
    # The simulator splits text into deltas of 1, 2, 3, 4 code points: 2.5 per delta on average.
    answer = ("resumable ✓ " * deltas)[: deltas * 5 // 2]
    owner = Owner(key="bench:resume")
    modes = {"not resumable": (False, "")}
    modes["resumable, memory"] = (True, "")
    if redis_url:
        modes["resumable, Redis"] = (True, redis_url)
    samples: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in modes}
    for repeat in range(repeats + 1):
        for mode, (resumable, url) in modes.items():
            settings.REDIS_URL = url
            request = ChatRequest(
                message="[sim:echo]" + answer,
                session_id=uuid.uuid4().hex,
                resumable=resumable,
            )
            count = 0
            cpu, wall = time.process_time(), time.perf_counter()
            async for event in service.achat_events(owner=owner, chat_request=request, transport="sse"):
                if event is not PING:
                    count += 1
                    sse_event(count, event.type, event.as_dict())
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if repeat:  # the first round warms up connections and caches
                samples[mode].append((wall, cpu, count))
    await asyncio.sleep(0.5)  # let the last Redis writes and end notes finish
    simulator.stop()
    results = {}
    for mode, runs in samples.items():
        events = runs[0][2]
        results[mode] = {
            "events": events,
            "wall_us_per_event": statistics.median(run[0] for run in runs) / events * 1e6,
            "cpu_us_per_event": statistics.median(run[1] for run in runs) / events * 1e6,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--deltas", type=int, default=400)
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "")

    alone = recording_alone(args.events, redis_url)
    print("## Recording alone, per event")
    print(f"memory backend: add {alone['memory_add_ns']:.0f} ns; kept {alone['memory_bytes_per_event']:.0f} bytes")
    if redis_url:
        print(
            f"Redis backend: add {alone['redis_add_ns']:.0f} ns on the turn's path; one event at a time: "
            f"{alone['redis_write_cpu_us']:.1f} µs CPU, {alone['redis_write_wall_us']:.1f} µs wall (off the "
            f"turn's path); Redis keeps {alone['redis_bytes_per_event']:.0f} bytes"
        )
        print(
            f"Redis backend, 200 replies in flight writing together: {alone['redis_busy_cpu_us']:.1f} µs CPU, "
            f"{alone['redis_busy_wall_us']:.1f} µs wall per event"
        )

    whole = asyncio.run(whole_replies(args.repeats, args.deltas, redis_url))
    print(f"\n## A whole reply through the chat service (median of {args.repeats})")
    print("| mode | events | wall µs/event | CPU µs/event |")
    print("|---|---|---|---|")
    for mode, numbers in whole.items():
        print(
            f"| {mode} | {numbers['events']} | {numbers['wall_us_per_event']:.1f} | {numbers['cpu_us_per_event']:.1f} |"
        )


if __name__ == "__main__":
    main()
