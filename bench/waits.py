"""How fast a cancel and a resume wake: cancel latency and resume lag, one worker and two.

    python -m bench.waits                     # its own simulator, database and servers
    python -m bench.run --skip …              # also runs as step `waits` of the whole benchmark

Needs Postgres (the database named by --db / BENCH_DB is dropped, recreated and migrated) and,
for the two-worker rows, Redis at REDIS_URL (default redis://127.0.0.1:6379/0). Every server is
uvicorn serving `cozeproject.asgi:application` in its own process; the clients run here.

* **Cancel → upstream.** A stream (`POST /api/chat/stream`, 200 tokens 20 ms apart) is read to
  its first delta; then `POST /api/chats/{chat_id}/cancel` is sent and the clock runs until the
  upstream learns of it: the simulator sees the chat's stream closed or receives Coze's cancel,
  whichever comes first (its `client_disconnected_at` / `canceled_at`, wall clock, this machine).
  One worker (no Redis: the stream and the cancel on the same process), and two workers sharing
  Postgres and Redis (the stream on A, the cancel on B, reaching A through the channel layer).
  Also the cancel request's own answer time (it answers once the reply is stored as cancelled).
* **Resume lag.** While a live client reads a reply, a second client resumes the session
  (`GET /api/sessions/{id}/stream?last_event_id=3`); for each event both receive, the lag is the
  resumed stream's receipt minus the live stream's. A resumable reply (followed from its replay
  buffer: memory on one worker, a Redis Stream across two), and a reply that is not resumable
  (nothing is buffered: the resume waits for the reply to end and sends its stored form; the
  lag is from the live client's `done` to the resumed stream's first event).

A measurement to read, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field

import httpx

from bench import procs

CANCEL_REPLY = "[sim:slow=20][sim:echo]" + "word " * 200  # 200+ tokens, 20 ms apart: ~5 s
RESUME_REPLY = "[sim:slow=20][sim:echo]" + "Resumed replies keep their ids. " * 2  # ~30 tokens
RESUME_AFTER_EVENTS = 3  # a resume continues after the live stream's third event (by that event's id)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] waits: {text}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "max": max(values, default=float("nan")),
    }


@dataclass
class Stream:
    """An SSE stream read in a task: each event's (id, type, data, arrival time)."""

    events: list[tuple[int, str, dict | str, float]] = field(default_factory=list)
    first_delta: asyncio.Event = field(default_factory=asyncio.Event)
    reached: dict[int, asyncio.Event] = field(default_factory=dict)
    status: int = 0

    def wait_count(self, count: int) -> asyncio.Event:
        """Set once `count` events have arrived (ids name their reply, docs/api.md §9, so a
        position is asked for by count and its id read from `events`)."""
        event = self.reached.setdefault(count, asyncio.Event())
        if len(self.events) >= count:
            event.set()
        return event

    async def read(self, response: httpx.Response) -> None:
        self.status = response.status_code
        event_id, kind, data = 0, "", ""
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                event_id = int(line[3:].strip())
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and kind:
                at = time.perf_counter()
                parsed = json.loads(data) if data.startswith("{") else data
                self.events.append((event_id, kind, parsed, at))
                if kind == "delta":
                    self.first_delta.set()
                self.wait_count(len(self.events))
                if kind == "done":
                    return
                kind, data = "", ""

    def chat_id(self) -> str:
        return next(data["chat_id"] for _, kind, data, _ in self.events if kind == "session")

    def arrivals(self) -> dict[int, float]:
        return {event_id: at for event_id, _, _, at in self.events}


class Gateways:
    """A running simulator plus the gateway processes each scenario needs."""

    def __init__(self, *, db: str, sim_url: str, key: str, redis_url: str):
        self.db, self.sim_url, self.key, self.redis_url = db, sim_url, key, redis_url
        self.seq = 0

    def server(self, *, redis: bool, name: str) -> procs.Server:
        extra = {"REDIS_URL": self.redis_url} if redis else {}
        env = procs.gateway_env(self.db, sim_url=self.sim_url, **extra)
        return procs.Server(kind="uvicorn", app="cozeproject.asgi:application", env=env, name=name).start()

    def session_id(self, label: str) -> str:
        self.seq += 1
        return f"waits-{label}-{os.getpid()}-{self.seq}"


def _url(server: procs.Server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def _open_stream(client: httpx.AsyncClient, server, key, text, session_id, resumable=False):
    body = {"message": text, "session_id": session_id, **({"resumable": True} if resumable else {})}
    request = client.build_request(
        "POST", _url(server, "/api/chat/stream"), json=body, headers={"Authorization": f"Bearer {key}"}
    )
    response = await client.send(request, stream=True)
    stream = Stream()
    task = asyncio.create_task(_read_and_close(stream, response))
    return stream, task


async def _read_and_close(stream: Stream, response: httpx.Response) -> None:
    try:
        await stream.read(response)
    finally:
        await response.aclose()


async def cancel_latency(g: Gateways, stream_on, cancel_on, samples: int) -> dict:
    upstream_ms, answer_ms, missed = [], [], []
    headers = {"Authorization": f"Bearer {g.key}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(samples + 2):
            stream, reader = await _open_stream(client, stream_on, g.key, CANCEL_REPLY, g.session_id("c"))
            await asyncio.wait_for(stream.first_delta.wait(), 10)
            chat_id = stream.chat_id()
            sent = time.time()
            answer = await client.post(_url(cancel_on, f"/api/chats/{chat_id}/cancel"), headers=headers)
            answered = time.time()
            await asyncio.wait_for(reader, 30)
            chat = (await client.get(f"{g.sim_url}/_sim/chats/{chat_id}")).json()
            # The upstream learns of the cancel from whichever comes first: the stream closed
            # (the simulator then marks the chat canceled) or Coze's cancel call.
            reached = [at for at in (chat.get("client_disconnected_at"), chat.get("canceled_at")) if at]
            if answer.status_code != 200 or not reached:
                missed.append({"answer": answer.status_code, "body": answer.text[:200], "upstream": chat.get("status")})
                continue
            if i >= 2:  # the first ones warm connections and the listener
                upstream_ms.append((min(reached) - sent) * 1000)
                answer_ms.append((answered - sent) * 1000)
    return {"upstream_ms": summary(upstream_ms), "answer_ms": summary(answer_ms), "missed": missed}


async def resume_lag(g: Gateways, stream_on, resume_on, samples: int, *, resumable: bool) -> dict:
    lags: list[float] = []
    headers = {"Authorization": f"Bearer {g.key}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(samples + 1):
            session_id = g.session_id("r")
            live, live_task = await _open_stream(
                client, stream_on, g.key, RESUME_REPLY, session_id, resumable=resumable
            )
            await asyncio.wait_for(live.wait_count(RESUME_AFTER_EVENTS).wait(), 10)
            after_id = live.events[RESUME_AFTER_EVENTS - 1][0]
            request = client.build_request(
                "GET",
                _url(resume_on, f"/api/sessions/{session_id}/stream?last_event_id={after_id}"),
                headers=headers,
            )
            resumed = Stream()
            resume_task = asyncio.create_task(_read_and_close(resumed, await client.send(request, stream=True)))
            await asyncio.wait_for(asyncio.gather(live_task, resume_task), 30)
            if i < 1:
                continue
            if resumable:
                live_at, resumed_at = live.arrivals(), resumed.arrivals()
                # Events already produced when the resume arrived are replayed, not waited for.
                opened = min(resumed_at.values())
                lags += [
                    (resumed_at[eid] - at) * 1000 for eid, at in live_at.items() if eid in resumed_at and at > opened
                ]
            else:
                done_at = live.events[-1][3]
                lags.append((resumed.events[0][3] - done_at) * 1000)
    return {"lag_ms": summary(lags)}


async def run(*, db: str, sim_url: str, key: str, redis_url: str, samples: int) -> dict:
    g = Gateways(db=db, sim_url=sim_url, key=key, redis_url=redis_url)
    out: dict = {"samples": samples}
    one = g.server(redis=False, name="waits-one")
    try:
        log(f"one worker: cancel, {samples} samples")
        out["cancel_one"] = await cancel_latency(g, one, one, samples)
        log(f"one worker: resume, {samples // 3} replies each")
        out["resume_one_buffer"] = await resume_lag(g, one, one, samples // 3, resumable=True)
        out["resume_one_stored"] = await resume_lag(g, one, one, samples // 3, resumable=False)
    finally:
        one.stop()
    a, b = g.server(redis=True, name="waits-a"), g.server(redis=True, name="waits-b")
    try:
        log(f"two workers with Redis: cancel, {samples} samples")
        out["cancel_two"] = await cancel_latency(g, a, b, samples)
        log(f"two workers with Redis: resume, {samples // 3} replies each")
        out["resume_two_buffer"] = await resume_lag(g, a, b, samples // 3, resumable=True)
        out["resume_two_stored"] = await resume_lag(g, a, b, samples // 3, resumable=False)
    finally:
        a.stop()
        b.stop()
    return out


def report(r: dict) -> str:
    def row(label: str, s: dict, goal: str = "") -> str:
        return f"| {label} | {s['n']} | {s['p50']:.1f} | {s['p90']:.1f} | {s['max']:.1f} | {goal} |"

    lines = [
        "| wait | samples | p50 ms | p90 ms | max ms | goal |",
        "|---|---|---|---|---|---|",
        row("cancel → upstream cancel, one worker", r["cancel_one"]["upstream_ms"], "≤ 20 ms p90"),
        row("cancel → upstream cancel, two workers (Redis)", r["cancel_two"]["upstream_ms"], "≤ 50 ms p90"),
        row("cancel request answered, one worker", r["cancel_one"]["answer_ms"]),
        row("cancel request answered, two workers", r["cancel_two"]["answer_ms"]),
        row("resume lag, buffered reply, one worker (memory)", r["resume_one_buffer"]["lag_ms"]),
        row("resume lag, buffered reply, two workers (Redis Stream)", r["resume_two_buffer"]["lag_ms"]),
        row("resume of a reply not buffered: its end → first event, one worker", r["resume_one_stored"]["lag_ms"]),
        row("resume of a reply not buffered: its end → first event, two workers", r["resume_two_stored"]["lag_ms"]),
    ]
    missed = r["cancel_one"]["missed"] + r["cancel_two"]["missed"]
    if missed:
        lines.append(f"\n{len(missed)} cancel(s) never reached the upstream: {missed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.waits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=os.environ.get("BENCH_DB", "cozeproject_bench"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--json", default="", help="also write the numbers here")
    args = parser.parse_args(argv)
    log(f"database {args.db}: recreate and migrate")
    procs.recreate_database(args.db)
    key = procs.create_api_key(args.db)
    sim = procs.Simulator(token_delay_ms=20).start()
    try:
        results = asyncio.run(run(db=args.db, sim_url=sim.url, key=key, redis_url=args.redis_url, samples=args.samples))
    finally:
        sim.stop()
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    print(report(results))


if __name__ == "__main__":
    main()
