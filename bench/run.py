"""The streaming benchmark: cozeproject against calling Coze directly with cozepy and against a bare
Django async view, on one machine, side by side in one run.

    python -m bench.run                      # everything, daphne and uvicorn
    python -m bench.run --quick              # smaller samples, N = 100
    python -m bench.run --server daphne --sizes 1000 --skip dbwork,earlier,serverburst

It starts, each as its own process: the built-in Coze simulator (20 tokens at 50 ms by default),
the server under daphne and/or uvicorn (`bench.bare:application`: the product's ASGI app with
two bare routes added, see bench/bare.py; Postgres database `cozeproject_bench` or --db / BENCH_DB,
dropped, recreated and migrated), and the earlier design (sync cozepy iterated in an async
generator, under uvicorn). The clients run in this process on uvloop. For each server, each figure
for three columns — direct cozepy (the project's sharded pool, as wide as the load), the bare view
(`/bare/stream`, `/bare/chat`: no database, no auth) and cozeproject (`/api/chat/stream`,
`/api/chat`):

1. time to first token, sequential samples interleaved: direct, bare SSE, product SSE and WebSocket;
2. a burst of 20 streams whose upstream takes 1 s to the first token;
3. sync replies (20 tokens, no delay; and at 50 ms) against the direct stream's completion;
4. short sync chats per second on one worker (threads and database connections at peak);
5. valid turns' time to first token with and without a flood of requests with wrong API keys;
6. N concurrent streams (a fresh server for bare and one for the product): wall time against N
   direct streams, failed or wrong streams, RSS per open stream, threads and database connections
   at peak, and `/health` latency sampled every 50 ms meanwhile;
7. database statements and transactions per turn, short reply against a long one;
8. the earlier design under the same burst and N;
9. every documented way to start the server (Procfile, scripts/serve) under 1,000 connects at once;
10. Coze's own API: the time to first token of a streamed `/v3/chat` beside `/api/chat/stream` (in
    step 1's rotation), and cozepy's `create_and_poll` against the reply's own time;
11. how fast a cancel reaches the upstream and a resumed stream gets an event, one worker and two
    sharing Redis (`REDIS_URL`, default redis://127.0.0.1:6379/0): bench/waits.py, under uvicorn.

Prints the tables (Markdown) and writes every number to --json. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import secrets
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop
from websockets.asyncio.client import connect as ws_connect

from bench import clients, procs, server_burst, waits
from bench.clients import HttpClient

DEFAULT_DB = "cozeproject_bench"
# 50 code points: the simulator splits it into exactly 20 deltas (1, 2, 3, 4 code points, …).
ANSWER = ("Twenty deltas, ümlaut → ✓ and digits 0123456789. " * 2)[:50]
SHORT_ANSWER = "Hi there!"
PRODUCT_STREAM, PRODUCT_CHAT = "/api/chat/stream", "/api/chat"
BARE_STREAM, BARE_CHAT = "/bare/stream", "/bare/chat"
OPENAI_STREAM = "/v1/chat/completions"
COZE_CHAT = "/v3/chat"
# cozepy's create_and_poll sleeps this long between two retrieves.
COZE_POLL_INTERVAL_MS = 1000.0
TARGETS = {
    "added_ttft_ms": (2.0, 5.0),
    "coze_over_sse_ms": 1.0,
    "streams_ratio": 1.25,
    "sync_ratio": 1.05,
    "burst_p90_s": 1.10,
    "kib_per_stream": 64.0,
    "chats_per_s": 90.0,
    "health_ms": 100.0,
}


def message(answer: str = ANSWER, *directives: str) -> str:
    """A user message the simulator answers with exactly `answer` (after the directives)."""
    return "".join(f"[sim:{d}]" for d in directives) + "[sim:echo]" + answer


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Target:
    """Where chats go: a started server plus the key and clients to reach it."""

    server: procs.Server
    key: str

    def http(self, keep_alive: bool = True) -> HttpClient:
        return HttpClient("127.0.0.1", self.server.port, keep_alive=keep_alive)

    def post(self, client: HttpClient, path: str, text: str, session_id: str, key: str | None = None) -> bytes:
        body = json.dumps({"message": text, "session_id": session_id}).encode()
        headers = {"Authorization": f"Bearer {key or self.key}", "Content-Type": "application/json"}
        return client.request_bytes("POST", path, body, headers)

    def openai_post(self, client: HttpClient, text: str, session_id: str) -> bytes:
        """A streamed `POST /v1/chat/completions`, pinned to a new session as `/api/chat/stream` is."""
        body = json.dumps(
            {"model": procs.BOT_ID, "messages": [{"role": "user", "content": text}], "stream": True}
        ).encode()
        headers = {
            "Authorization": f"Bearer {self.key}",
            "Content-Type": "application/json",
            "X-Session-Id": session_id,
        }
        return client.request_bytes("POST", OPENAI_STREAM, body, headers)

    def coze_post(self, client: HttpClient, text: str) -> bytes:
        """A streamed `POST /v3/chat` (Coze's own API) starting a new conversation, as each
        `/api/chat/stream` of the rotation starts a new session."""
        body = json.dumps(
            {
                "bot_id": procs.BOT_ID,
                "user_id": "bench",
                "stream": True,
                "additional_messages": [{"role": "user", "content": text, "content_type": "text"}],
            }
        ).encode()
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        return client.request_bytes("POST", COZE_CHAT, body, headers)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.db_name = args.db
        self.sim: procs.Simulator | None = None
        self.key = ""
        self.db: procs.DbWatch | None = None
        self.results: dict = {"machine": machine(), "args": vars(args), "servers": {}}
        self.run_id = int(time.time())
        self.seq = 0

    def session(self, label: str) -> str:
        self.seq += 1
        return f"{label}-{self.run_id}-{self.seq}"

    # --- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        log(f"database {self.db_name}: recreate and migrate")
        procs.recreate_database(self.db_name)
        self.key = procs.create_api_key(self.db_name)
        self.db = procs.DbWatch(self.db_name)
        self.sim = procs.Simulator(token_delay_ms=self.args.token_delay_ms).start()
        log(f"simulator at {self.sim.url} ({self.args.token_delay_ms} ms between tokens)")
        self.direct, _ = clients.direct_client(self.sim.url, procs.SIM_TOKEN)

    def gateway(self, kind: str, app: str = "", name: str = "gateway", **env) -> Target:
        if not app and self.args.whatif:
            app, env = "bench.whatif:application", {**env, "BENCH_WHATIF": self.args.whatif}
        app = app or "bench.bare:application"
        prefix = []
        if self.args.py_spy and name == "gateway":
            out = Path(self.args.py_spy) / f"{kind}-{self.seq}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            # --gil: only samples holding the GIL, i.e. CPU attribution; --nonblocking: don't pause the server.
            spy = [str(procs.BIN / "py-spy"), "record", "--gil", "--nonblocking", "-f", "raw", "-r", "100"]
            prefix = [*spy, "-o", str(out), "--"]
        self.seq += 1
        server = procs.Server(
            kind=kind,
            app=app,
            env=procs.gateway_env(self.db_name, sim_url=self.sim.url, **env),
            name=name,
            prefix=prefix,
        ).start()
        return Target(server=server, key=self.key)

    def teardown(self) -> None:
        if self.sim:
            self.sim.stop()
        if self.db:
            self.db.close()

    # --- steps -----------------------------------------------------------------------------------

    async def warm_up(self, target: Target, count: int = 30) -> None:
        client = target.http()
        text = message(ANSWER, "slow=1")
        runs = [
            clients.sse_stream(client, target.post(client, path, text, self.session("warm")))
            for path in (PRODUCT_STREAM, BARE_STREAM)
            for _ in range(count)
        ]
        results = await asyncio.gather(*runs)
        client.close()
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"warm-up failed: {bad[:3]}")

    async def ttft(self, target: Target, samples: int) -> dict:
        """Sequential chats, interleaved direct / bare SSE / SSE / WebSocket / OpenAI-compatible stream,
        each on a kept-alive connection."""
        text = message(ANSWER, "slow=1")  # first token timing only; a fast tail keeps samples short
        client = target.http()
        values: dict[str, list[float]] = {"direct": [], "bare": [], "sse": [], "ws": [], "openai": [], "coze": []}
        wrong = 0
        headers = {"Authorization": f"Bearer {target.key}"}
        async with ws_connect(f"ws://127.0.0.1:{target.server.port}/ws/chat/", additional_headers=headers) as sock:
            for i in range(samples + 5):
                runs = [
                    ("direct", clients.direct_stream(self.direct, bot_id=procs.BOT_ID, message=text)),
                    ("bare", clients.sse_stream(client, target.post(client, BARE_STREAM, text, self.session("tb")))),
                    ("sse", clients.sse_stream(client, target.post(client, PRODUCT_STREAM, text, self.session("t")))),
                    ("ws", clients.ws_chat(sock, text, self.session("w"))),
                    (
                        "openai",
                        clients.sse_stream(
                            client, target.openai_post(client, text, self.session("o")), flavour="openai"
                        ),
                    ),
                    ("coze", clients.sse_stream(client, target.coze_post(client, text), flavour="coze")),
                ]
                for name, run in runs[i % 6 :] + runs[: i % 6]:
                    result = await run
                    result.check(ANSWER, need_completed=name not in ("direct", "openai", "coze"))
                    if not result.ok:
                        wrong += 1
                        continue
                    if i >= 5:  # the first rounds warm caches and connections
                        values[name].append(result.ttft_ms)
                    await asyncio.sleep(0.002)
        client.close()
        out: dict = {"samples": samples, "wrong": wrong}
        for name, series in values.items():
            out[name] = {"p50": pct(series, 50), "p90": pct(series, 90), "p99": pct(series, 99)}
        for name in ("bare", "sse", "ws", "openai", "coze"):
            out[f"{name}_added"] = {q: out[name][q] - out["direct"][q] for q in ("p50", "p90")}
        out["coze_over_sse"] = {q: out["coze"][q] - out["sse"][q] for q in ("p50", "p90")}
        return out

    async def coze_poll(self, target: Target, samples: int) -> dict:
        """cozepy's `create_and_poll` through the gateway (its non-stream `/v3/chat`, then a retrieve a
        second until the chat ends, then the chat's messages) against the reply's own time: the same
        chat streamed through `/api/chat/stream`, request to `done`. Interleaved, one at a time."""
        import cozepy

        coze = cozepy.Coze(auth=cozepy.TokenAuth(target.key), base_url=f"http://127.0.0.1:{target.server.port}")
        client = target.http()
        own, polled, wrong = [], [], 0
        for _ in range(samples):
            streamed = await clients.sse_stream(
                client, target.post(client, PRODUCT_STREAM, message(), self.session("p"))
            )
            streamed.check(ANSWER, need_completed=True)
            started = time.perf_counter()
            poll = await asyncio.to_thread(
                coze.chat.create_and_poll,
                bot_id=procs.BOT_ID,
                user_id="bench",
                additional_messages=[cozepy.Message.build_user_question_text(message())],
            )
            elapsed = (time.perf_counter() - started) * 1000
            answers = [m.content for m in poll.messages if m.type == "answer"]
            if not streamed.ok or poll.chat.status != cozepy.ChatStatus.COMPLETED or answers != [ANSWER]:
                wrong += 1
                continue
            own.append(streamed.duration_ms)
            polled.append(elapsed)
        client.close()
        added = [p - o for p, o in zip(polled, own, strict=True)]
        return {
            "samples": samples,
            "wrong": wrong,
            "own_p50": pct(own, 50),
            "poll_p50": pct(polled, 50),
            "added_p50": pct(added, 50),
            "added_max": max(added, default=float("nan")),
            "interval_ms": COZE_POLL_INTERVAL_MS,
        }

    async def burst(self, target: Target | None, path: str = PRODUCT_STREAM, count: int = 20, deadline=60.0) -> dict:
        """`count` streams at once; the upstream's first token takes 1 s."""
        text = message(ANSWER, "first_delay=1000")
        if target is None:
            runs = [clients.direct_stream(self.direct, bot_id=procs.BOT_ID, message=text) for _ in range(count)]
        else:
            client = target.http()
            runs = [
                clients.sse_stream(client, target.post(client, path, text, self.session("b"))) for _ in range(count)
            ]
        try:
            results = await asyncio.wait_for(asyncio.gather(*runs), deadline)
        except TimeoutError:
            return {"count": count, "timed_out_after_s": deadline}
        for result in results:
            result.check(ANSWER, need_completed=target is not None)
        ttfts = [r.ttft_ms for r in results if r.ok]
        return {
            "count": count,
            "failed": sum(not r.ok for r in results),
            "ttft_p50": pct(ttfts, 50),
            "ttft_p90": pct(ttfts, 90),
            "ttft_max": max(ttfts, default=float("nan")),
        }

    async def streams(
        self, target: Target | None, n: int, path: str = PRODUCT_STREAM, deadline: float = 300.0, sample: bool = True
    ) -> dict:
        """N streams at once, direct (target None) or through the server; samples the server and
        `/health` meanwhile."""
        text = message(ANSWER)
        sampler = health = None
        if target is None:
            direct, pool = clients.direct_client(self.sim.url, procs.SIM_TOKEN)
            runs = [clients.direct_stream(direct, bot_id=procs.BOT_ID, message=text) for _ in range(n)]
        else:
            client = target.http(keep_alive=False)
            runs = [
                clients.sse_stream(client, target.post(client, path, text, self.session(f"n{n}"))) for _ in range(n)
            ]
            if sample:
                sampler = Sampler(target.server.process(), self.db)
                sampler.begin()
                sampler.task = asyncio.create_task(sampler.run())
                health = HealthProbe(target)
                health.task = asyncio.create_task(health.run())
        started = clients.now()
        try:
            results = await asyncio.wait_for(asyncio.gather(*runs), deadline)
        except TimeoutError:
            results = None
        wall = clients.now() - started
        if target is None:
            await pool.aclose()
        out: dict = {"n": n, "path": path, "wall_s": wall}
        if sampler is not None:
            out.update(await sampler.finish(n))
            out["health"] = await health.finish()
        if results is None:
            out.update(timed_out=True, failed=n, wrong=0)
            return out
        failed = wrong = 0
        for result in results:
            if not result.ok:
                failed += 1
                continue
            result.check(ANSWER, need_completed=target is not None)
            if not result.ok:
                wrong += 1
        errors = sorted({r.error for r in results if r.error})[:3]
        ttfts = [r.ttft_ms for r in results if r.ttft_ms is not None]
        out.update(failed=failed, wrong=wrong, errors=errors, ttft_p50=pct(ttfts, 50), ttft_p90=pct(ttfts, 90))
        return out

    async def sync_latency(self, target: Target, samples: int, directives: tuple[str, ...]) -> dict:
        """`POST /api/chat` and `/bare/chat` against the direct stream's completion, sequential, interleaved."""
        text = message(ANSWER, *directives)
        client = target.http()
        times: dict[str, list[float]] = {"direct": [], "bare": [], "product": []}
        bad = 0
        for i in range(samples + 2):
            for name in ("direct", "bare", "product"):
                if name == "direct":
                    result = await clients.direct_stream(self.direct, bot_id=procs.BOT_ID, message=text)
                    result.check(ANSWER, need_completed=False)
                    ok, elapsed = result.ok, result.duration_ms
                else:
                    path = BARE_CHAT if name == "bare" else PRODUCT_CHAT
                    request = target.post(client, path, text, self.session("s"))
                    status, body, t0, t1 = await clients.json_request(client, request)
                    ok, elapsed = status == 200 and json.loads(body)["response"] == ANSWER, (t1 - t0) * 1000
                if not ok:
                    bad += 1
                elif i >= 2:  # the first rounds warm connections
                    times[name].append(elapsed)
        client.close()
        out: dict = {"samples": samples, "directives": directives, "bad": bad}
        for name, series in times.items():
            out[f"{name}_p50_ms"] = pct(series, 50)
        for name in ("bare", "product"):
            out[f"{name}_ratio"] = out[f"{name}_p50_ms"] / out["direct_p50_ms"]
        return out

    async def throughput(self, target: Target | None, total: int, concurrency: int, path: str = PRODUCT_CHAT) -> dict:
        """Short sync chats (no token delay), closed loop: chats per second on one worker.

        Direct (target None): the same chats as cozepy streams straight to the simulator."""
        text = message(SHORT_ANSWER, "slow=0")
        latencies: list[float] = []
        bad = 0
        remaining = total
        sampler = None
        if target is not None:
            proc = target.server.process()
            sampler = Sampler(proc, self.db)
            sampler.begin()
            sampler.task = asyncio.create_task(sampler.run())
            proc.cpu_percent()

        async def worker() -> None:
            nonlocal remaining, bad
            client = target.http() if target is not None else None
            while remaining > 0:
                remaining -= 1
                if target is None:
                    result = await clients.direct_stream(self.direct, bot_id=procs.BOT_ID, message=text)
                    result.check(SHORT_ANSWER, need_completed=False)
                    ok, elapsed = result.ok, result.duration_ms
                else:
                    status, body, t0, t1 = await clients.json_request(
                        client, target.post(client, path, text, self.session("q"))
                    )
                    ok, elapsed = status == 200 and json.loads(body)["response"] == SHORT_ANSWER, (t1 - t0) * 1000
                if ok:
                    latencies.append(elapsed)
                else:
                    bad += 1
            if client is not None:
                client.close()

        started = clients.now()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = clients.now() - started
        out = {
            "total": total,
            "concurrency": concurrency,
            "bad": bad,
            "per_s": len(latencies) / wall,
            "p50_ms": pct(latencies, 50),
            "p90_ms": pct(latencies, 90),
        }
        if sampler is not None:
            out["server_cpu_percent"] = proc.cpu_percent()
            peaks = await sampler.finish(1)
            out.update({k: peaks[k] for k in ("base_threads", "peak_threads", "base_db_connections")})
            out["peak_db_connections"] = peaks["peak_db_connections"]
        return out

    async def flood(self, target: Target, samples: int, total: int, concurrency: int) -> dict:
        """Valid turns' TTFT alone, then while `concurrency` clients send requests with wrong keys.

        The flood's requests are `POST /api/chat/stream` with random well-formed `cz_…` keys (the
        product answers 401); it runs until `total` were sent and the valid samples are taken."""
        text = message(ANSWER, "slow=1")

        async def valid_ttfts(count: int, until: asyncio.Event | None = None) -> list[float]:
            client = target.http()
            out: list[float] = []
            while len(out) < count or (until is not None and not until.is_set()):
                result = await clients.sse_stream(client, target.post(client, PRODUCT_STREAM, text, self.session("fv")))
                result.check(ANSWER, need_completed=True)
                if not result.ok:
                    raise RuntimeError(f"valid turn failed during the flood step: {result.error}")
                out.append(result.ttft_ms)
                await asyncio.sleep(0.002)
            client.close()
            return out

        alone = await valid_ttfts(samples)
        statuses: dict[str, int] = {}
        sent = 0
        flood_done = asyncio.Event()
        valid_done = asyncio.Event()

        async def flooder() -> None:
            nonlocal sent
            client = target.http()
            while sent < total or not valid_done.is_set():
                sent += 1
                wrong_key = "cz_" + secrets.token_urlsafe(32)
                request = target.post(client, PRODUCT_STREAM, text, self.session("f"), key=wrong_key)
                try:
                    status, _, _, _ = await clients.json_request(client, request)
                    label = str(status)
                except Exception as exc:
                    label = type(exc).__name__
                statuses[label] = statuses.get(label, 0) + 1
            client.close()

        async def flood_all() -> None:
            await asyncio.gather(*(flooder() for _ in range(concurrency)))
            flood_done.set()

        started = clients.now()
        flooding = asyncio.create_task(flood_all())
        await asyncio.sleep(0.2)  # the flood is under way before the first valid turn
        during = await valid_ttfts(samples)
        valid_done.set()
        await flooding
        wall = clients.now() - started
        return {
            "samples": samples,
            "alone_p50": pct(alone, 50),
            "alone_p90": pct(alone, 90),
            "flood_p50": pct(during, 50),
            "flood_p90": pct(during, 90),
            "flood_requests": sent,
            "flood_per_s": sent / wall,
            "flood_statuses": statuses,
        }

    async def db_work(self, turns: int) -> dict:
        """SQL statements per turn for a short (20 deltas) and a long (2,000 deltas) reply.

        Statements are counted by the gateway itself (bench.counting); transactions and rows from
        pg_stat_database, which idle backends flush only every 10 s, hence the waits.
        """
        target = self.gateway("daphne", app="bench.counting:application", name="counting")
        try:
            client = target.http()
            warm = [
                clients.sse_stream(
                    client, target.post(client, PRODUCT_STREAM, message(ANSWER, "slow=1"), self.session("dw"))
                )
                for _ in range(5)
            ]
            await asyncio.gather(*warm)
            client.close()
            out = {}
            long_answer = ("x" * 10 + "y" * 15) * 200  # 5,000 code points: 2,000 deltas
            await asyncio.sleep(11)
            for label, answer, directives in (
                ("short", ANSWER, ("slow=1",)),
                ("long", long_answer, ("slow=0.2",)),
            ):
                client = target.http()
                before_counts = counting_queries(target)
                before = self.db.stats()
                deltas = 0
                for _ in range(turns):
                    result = await clients.sse_stream(
                        client, target.post(client, PRODUCT_STREAM, message(answer, *directives), self.session("d"))
                    )
                    result.check(answer, need_completed=True)
                    if not result.ok:
                        raise RuntimeError(f"db-work turn failed: {result.error}")
                    deltas += len(result.parts)
                client.close()
                after_counts = counting_queries(target)
                await asyncio.sleep(11)
                after = self.db.stats()
                kinds = {
                    kind: (count - before_counts["kinds"].get(kind, 0)) / turns
                    for kind, count in sorted(after_counts["kinds"].items())
                    if count != before_counts["kinds"].get(kind, 0)
                }
                out[label] = {
                    "deltas_per_turn": deltas / turns,
                    "statements_per_turn": (after_counts["queries"] - before_counts["queries"]) / turns,
                    "statement_kinds_per_turn": kinds,
                    **{f"{k}_per_turn": (after[k] - before[k]) / turns for k in ("commits", "inserted", "updated")},
                }
            return out
        finally:
            target.server.stop()

    # --- the whole run -------------------------------------------------------------------------

    async def run(self) -> dict:
        args = self.args
        skip = set(args.skip)
        for kind in args.servers:
            res = self.results["servers"].setdefault(kind, {})
            if not skip >= {"ttft", "burst", "sync", "throughput", "flood", "cozepoll"}:
                log(f"{kind}: start")
                target = self.gateway(kind)
                try:
                    await self.warm_up(target)
                    if "ttft" not in skip:
                        log(f"{kind}: time to first token, {args.ttft_samples} samples per column")
                        res["ttft"] = await self.ttft(target, args.ttft_samples)
                    if "burst" not in skip:
                        log(f"{kind}: burst of 20 with a 1 s first token")
                        res["burst"] = {
                            "direct": await self.burst(None),
                            "bare": await self.burst(target, BARE_STREAM),
                            "product": await self.burst(target, PRODUCT_STREAM),
                        }
                    if "sync" not in skip:
                        log(f"{kind}: sync replies, {args.sync_samples} samples per column")
                        res["sync_fast"] = await self.sync_latency(target, args.sync_samples * 4, ("slow=0",))
                        res["sync"] = await self.sync_latency(target, args.sync_samples, ())
                    if "throughput" not in skip:
                        log(f"{kind}: short sync chats per second, {args.throughput_total} per column")
                        res["throughput"] = {
                            "direct": await self.throughput(None, args.throughput_total, args.concurrency),
                            "bare": await self.throughput(target, args.throughput_total, args.concurrency, BARE_CHAT),
                            "product": await self.throughput(target, args.throughput_total, args.concurrency),
                        }
                    if "flood" not in skip:
                        log(f"{kind}: valid turns with and without a flood of {args.flood_total} wrong keys")
                        res["flood"] = await self.flood(target, args.flood_samples, args.flood_total, args.concurrency)
                    if "cozepoll" not in skip:
                        log(f"{kind}: cozepy's create_and_poll, {args.coze_poll_samples} samples")
                        res["coze_poll"] = await self.coze_poll(target, args.coze_poll_samples)
                finally:
                    target.server.stop()
            if "streams" not in skip:
                res["streams"] = []
                for n in args.sizes:
                    log(f"{kind}: {n} concurrent streams: direct, then bare (fresh server)")
                    target = self.gateway(kind)
                    try:
                        await self.warm_up(target)
                        await asyncio.sleep(0.5)
                        direct = await self.streams(None, n)
                        await asyncio.sleep(0.5)
                        bare = await self.streams(target, n, BARE_STREAM)
                    finally:
                        target.server.stop()
                    log(f"{kind}: {n} concurrent streams: cozeproject (fresh server)")
                    target = self.gateway(kind)
                    try:
                        await self.warm_up(target)
                        await asyncio.sleep(0.5)
                        product = await self.streams(target, n, PRODUCT_STREAM)
                    finally:
                        target.server.stop()
                    for run in (bare, product):
                        run["direct_wall_s"] = direct["wall_s"]
                        run["direct_failed"] = direct["failed"] + direct["wrong"]
                        run["ratio"] = run["wall_s"] / direct["wall_s"]
                    res["streams"].append({"n": n, "direct": direct, "bare": bare, "product": product})
                    log(f"{kind}: N={n} ratio bare {bare['ratio']:.2f}, cozeproject {product['ratio']:.2f}")
        if "dbwork" not in skip:
            log("database work per turn (query-counting gateway)")
            self.results["db_work"] = await self.db_work(args.db_turns)
        if "earlier" not in skip:
            log("earlier design (sync cozepy in an async generator, uvicorn)")
            server = procs.Server(
                kind="uvicorn",
                app="bench.earlier_design:app",
                env=procs.gateway_env(self.db_name, sim_url=self.sim.url),
                name="earlier",
            ).start()
            target = Target(server=server, key=self.key)
            try:
                earlier = self.results["earlier"] = {}
                earlier["burst"] = await self.burst(target, deadline=args.earlier_deadline)
                direct = await self.streams(None, args.earlier_n)
                run = await self.streams(target, args.earlier_n, deadline=args.earlier_deadline, sample=False)
                run["direct_wall_s"] = direct["wall_s"]
                run["ratio"] = run["wall_s"] / direct["wall_s"]
                earlier["streams"] = run
            finally:
                server.stop()
        if "waits" not in skip:
            log("cancel and resume latency, one worker and two (bench/waits.py)")
            self.results["waits"] = await waits.run(
                db=self.db_name,
                sim_url=self.sim.url,
                key=self.key,
                redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                samples=args.wait_samples,
            )
        if "serverburst" not in skip:
            log("documented server commands under 1,000 connects at once")
            env = procs.gateway_env(self.db_name, sim_url=self.sim.url)
            self.results["server_burst"] = await server_burst.run(
                env, key=self.key, count=args.server_burst, kind=args.server_burst_request
            )
        return self.results


class HealthProbe:
    """`GET /health` every 50 ms, each on a new connection (as a load balancer's check) and each on
    its own, so that a slow answer doesn't hold back the probes after it."""

    def __init__(self, target: Target, every: float = 0.05, timeout: float = 10.0):
        self.target, self.every, self.timeout = target, every, timeout
        self.probes: list[asyncio.Task] = []
        self.stopped = False
        self.task: asyncio.Task | None = None

    async def probe(self) -> float | None:
        client = self.target.http(keep_alive=False)
        request = client.request_bytes("GET", "/health", b"", {})
        try:
            status, _, t0, t1 = await asyncio.wait_for(clients.json_request(client, request), self.timeout)
        except Exception:  # a failed or slower than `timeout` probe counts as failed
            return None
        return (t1 - t0) * 1000 if status == 200 else None

    async def run(self) -> None:
        while not self.stopped:
            self.probes.append(asyncio.create_task(self.probe()))
            await asyncio.sleep(self.every)

    async def finish(self) -> dict:
        self.stopped = True
        await self.task
        answers = await asyncio.gather(*self.probes)
        times = [a for a in answers if a is not None]
        return {
            "probes": len(answers),
            "failed": len(answers) - len(times),
            "p50_ms": pct(times, 50),
            "p99_ms": pct(times, 99),
            "max_ms": max(times, default=float("nan")),
        }


class Sampler:
    """Samples the server's RSS and threads and the database's connections every 50 ms."""

    def __init__(self, proc: psutil.Process, db: procs.DbWatch):
        self.proc, self.db = proc, db
        self.samples: list[tuple[int, int, int, int]] = []  # open streams, rss, threads, db conns
        self.stopped = False
        self.task: asyncio.Task | None = None

    def begin(self) -> None:
        gc.collect()
        self.base_rss = self.proc.memory_info().rss
        self.base_threads = self.proc.num_threads()
        self.base_db = self.db.connections()
        clients.OPEN[0] = 0

    async def run(self) -> None:
        while True:  # at least one sample, however short the run
            self.samples.append(
                (clients.OPEN[0], self.proc.memory_info().rss, self.proc.num_threads(), self.db.connections())
            )
            if self.stopped:
                return
            await asyncio.sleep(0.05)

    async def finish(self, n: int) -> dict:
        self.stopped = True
        await self.task
        peak_open = max((s[0] for s in self.samples), default=0)
        near_peak = [s for s in self.samples if s[0] >= 0.95 * peak_open] or self.samples
        rss_at_peak = max(s[1] for s in near_peak)
        open_at = max(s[0] for s in near_peak if s[1] == rss_at_peak)
        return {
            "peak_open": peak_open,
            "base_rss_mib": self.base_rss / 2**20,
            "peak_rss_mib": max(s[1] for s in self.samples) / 2**20,
            "kib_per_stream": (rss_at_peak - self.base_rss) / 1024 / max(open_at, 1),
            "base_threads": self.base_threads,
            "peak_threads": max(s[2] for s in self.samples),
            "base_db_connections": self.base_db,
            "peak_db_connections": max(s[3] for s in self.samples),
        }


def counting_queries(target: Target) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{target.server.port}/_bench/queries", timeout=5) as response:
        return json.loads(response.read())


def machine() -> dict:
    return {
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# --- report ---------------------------------------------------------------------------------------


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def met(ok: bool) -> str:
    return "✓" if ok else "✗"


def server_table(kind: str, s: dict) -> list[str]:
    """The issue's table for one server: direct cozepy, the bare view, cozeproject, target."""
    rows: list[tuple[str, str, str, str, str]] = []
    t = s.get("ttft")
    if t:
        lo, hi = TARGETS["added_ttft_ms"]
        p50, p90 = t["sse_added"]["p50"], t["sse_added"]["p90"]
        rows.append(
            (
                "added time to first token, p50 / p90 (ms)",
                f"0 (itself {fmt(t['direct']['p50'], 2)} / {fmt(t['direct']['p90'], 2)})",
                f"{fmt(t['bare_added']['p50'], 2)} / {fmt(t['bare_added']['p90'], 2)}",
                f"{fmt(p50, 2)} / {fmt(p90, 2)} {met(p50 <= lo and p90 <= hi)}; "
                f"WebSocket {fmt(t['ws_added']['p50'], 2)} / {fmt(t['ws_added']['p90'], 2)}; "
                f"OpenAI-compatible {fmt(t['openai_added']['p50'], 2)} / {fmt(t['openai_added']['p90'], 2)}",
                f"≤ {lo:g} / ≤ {hi:g}",
            )
        )
        if "coze_over_sse" in t:
            over = t["coze_over_sse"]
            rows.append(
                (
                    "Coze's API: streamed `/v3/chat` TTFT minus `/api/chat/stream`'s, p50 / p90 (ms)",
                    "-",
                    "-",
                    f"{fmt(over['p50'], 2)} / {fmt(over['p90'], 2)} {met(over['p50'] <= TARGETS['coze_over_sse_ms'])} "
                    f"(added over direct {fmt(t['coze_added']['p50'], 2)} / {fmt(t['coze_added']['p90'], 2)})",
                    f"≤ {TARGETS['coze_over_sse_ms']:g} (p50)",
                )
            )
    c = s.get("coze_poll")
    if c:
        rows.append(
            (
                "Coze's API: cozepy `create_and_poll` minus the reply's own time, p50 / max (ms)",
                "-",
                "-",
                f"{fmt(c['added_p50'], 0)} / {fmt(c['added_max'], 0)} {met(c['added_p50'] <= c['interval_ms'])} "
                f"(reply {fmt(c['own_p50'], 0)}, polled {fmt(c['poll_p50'], 0)}; {c['wrong']} wrong)",
                f"≤ {c['interval_ms']:g} (one poll)",
            )
        )
    for entry in s.get("streams", []):
        d, b, p = entry["direct"], entry["bare"], entry["product"]

        def ratio(r: dict) -> str:
            return f"{fmt(r['ratio'], 2)} ({fmt(r['wall_s'], 2)} s, {r['failed']} failed, {r['wrong']} wrong)"

        ok = p["ratio"] <= TARGETS["streams_ratio"] and p["failed"] == 0 and p["wrong"] == 0
        rows.append(
            (
                f"{entry['n']:,} concurrent streams, wall time ÷ direct",
                f"1.00 ({fmt(d['wall_s'], 2)} s, {d['failed'] + d['wrong']} failed)",
                ratio(b),
                f"{ratio(p)} {met(ok)}",
                f"≤ {TARGETS['streams_ratio']:g}, 0 failed",
            )
        )
    for key, label in (
        ("sync_fast", "sync reply (20 tokens, no delay) ÷ direct stream"),
        ("sync", "sync reply (20 tokens at the upstream's pace) ÷ direct stream"),
    ):
        y = s.get(key)
        if y:
            ok = y["product_ratio"] <= TARGETS["sync_ratio"]
            rows.append(
                (
                    label,
                    f"1.00 ({fmt(y['direct_p50_ms'])} ms)",
                    f"{fmt(y['bare_ratio'], 3)} ({fmt(y['bare_p50_ms'])} ms)",
                    f"{fmt(y['product_ratio'], 3)} ({fmt(y['product_p50_ms'])} ms) {met(ok)}",
                    f"≤ {TARGETS['sync_ratio']:g}",
                )
            )
    bu = s.get("burst")
    if bu:

        def p90(r: dict) -> str:
            if "timed_out_after_s" in r:
                return f"timed out after {r['timed_out_after_s']:g} s"
            return f"{r['ttft_p90'] / 1000:.3f} s" + (f" ({r['failed']} failed)" if r["failed"] else "")

        p = bu["product"]
        ok = "ttft_p90" in p and p["ttft_p90"] / 1000 <= TARGETS["burst_p90_s"] and p["failed"] == 0
        rows.append(
            (
                "burst of 20 new streams, upstream first token at 1 s: client p90",
                p90(bu["direct"]),
                p90(bu["bare"]),
                f"{p90(p)} {met(ok)}",
                f"≤ {TARGETS['burst_p90_s']:.2f} s",
            )
        )
    if s.get("streams"):
        last = s["streams"][-1]
        b, p = last["bare"], last["product"]
        n = last["n"]
        ok = p.get("kib_per_stream", 1e9) <= TARGETS["kib_per_stream"]
        rows.append(
            (
                f"server memory per open stream (N = {n:,})",
                "-",
                f"{fmt(b.get('kib_per_stream'))} KiB",
                f"{fmt(p.get('kib_per_stream'))} KiB {met(ok)}",
                f"≤ {TARGETS['kib_per_stream']:g} KiB",
            )
        )
    tp = s.get("throughput")
    if tp:
        ok = tp["product"]["per_s"] >= TARGETS["chats_per_s"] and tp["product"]["bad"] == 0

        def rate(r: dict) -> str:
            return f"{fmt(r['per_s'])}/s" + (f" ({r['bad']} failed)" if r["bad"] else "")

        rows.append(
            (
                f"short sync chats per second, one worker ({tp['product']['concurrency']} clients)",
                rate(tp["direct"]),
                rate(tp["bare"]),
                f"{rate(tp['product'])} {met(ok)}",
                f"≥ {TARGETS['chats_per_s']:g}/s",
            )
        )
    if s.get("streams") or tp:
        last = s["streams"][-1] if s.get("streams") else None

        def peaks(field: str, column: str) -> str:
            parts = []
            if last:
                r = last[column]
                parts.append(f"{r.get('base_' + field)} → {r.get('peak_' + field)} streams")
            if tp:
                r = tp[column]
                parts.append(f"{r.get('base_' + field)} → {r.get('peak_' + field)} sync chats")
            return "; ".join(parts)

        rows.append(
            ("server threads, at rest → peak", "-", peaks("threads", "bare"), peaks("threads", "product"), "bounded")
        )
        rows.append(
            (
                "database connections, at rest → peak",
                "-",
                peaks("db_connections", "bare"),
                peaks("db_connections", "product"),
                "bounded",
            )
        )
    if s.get("streams"):
        last = s["streams"][-1]

        def health(r: dict) -> str:
            h = r.get("health")
            if not h:
                return "-"
            fails = f", {h['failed']} failed" if h["failed"] else ""
            return f"{fmt(h['p50_ms'])} / {fmt(h['p99_ms'])} / {fmt(h['max_ms'])} ms ({h['probes']} probes{fails})"

        h = last["product"].get("health") or {}
        ok = h.get("max_ms", 1e9) <= TARGETS["health_ms"] and not h.get("failed")
        rows.append(
            (
                f"`/health` while {last['n']:,} streams start and run, p50 / p99 / max",
                "-",
                health(last["bare"]),
                f"{health(last['product'])} {met(ok)}",
                f"≤ {TARGETS['health_ms']:g} ms",
            )
        )
    f = s.get("flood")
    if f:
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(f["flood_statuses"].items()))
        rows.append(
            (
                f"valid turns' time to first token p50 / p90, alone → during {f['flood_requests']:,} "
                f"wrong-key requests ({fmt(f['flood_per_s'], 0)}/s; {statuses})",
                "-",
                "-",
                f"{fmt(f['alone_p50'], 2)} / {fmt(f['alone_p90'], 2)} → "
                f"{fmt(f['flood_p50'], 2)} / {fmt(f['flood_p90'], 2)} ms",
                "not delayed",
            )
        )
    if not rows:
        return []
    lines = [
        f"### {kind}",
        "",
        "| figure | calling Coze directly with cozepy (same pool width) | a bare Django async view (no DB, no auth) "
        "| cozeproject | target |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return [*lines, ""]


def report(results: dict) -> str:
    m = results["machine"]
    a = results["args"]
    lines = [
        f"Machine: {m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}; "
        "simulator, servers, Postgres and clients share it.",
        f"Upstream: {a['token_delay_ms']:g} ms between tokens, 20 deltas per reply. "
        f"Load average at start {m['load_average_at_start']}, at end {results.get('load_average_at_end')}.",
        "",
    ]
    if a.get("whatif"):
        lines += [f"**What-if `{a['whatif']}`** (bench/whatif.py): costs taken away, not the product.", ""]
    servers = results["servers"]
    for kind, s in servers.items():
        lines += server_table(kind, s)
    rows = [(kind, entry) for kind, s in servers.items() for entry in s.get("streams", [])]
    earlier = results.get("earlier", {}).get("streams")
    if rows or earlier:
        lines += [
            "### Concurrent streams in detail",
            "",
            "| server | N | column | wall s | ÷ direct | failed / wrong | TTFT p50 / p90 ms | KiB per stream "
            "| threads | DB conns | `/health` p50 / p99 / max ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind, entry in rows:
            for column in ("direct", "bare", "product"):
                r = entry[column]
                h = r.get("health")
                lines.append(
                    f"| {kind} | {entry['n']:,} | {column} | {fmt(r['wall_s'], 2)} | {fmt(r.get('ratio', 1.0), 2)} "
                    f"| {r['failed']} / {r['wrong']} | {fmt(r.get('ttft_p50'))} / {fmt(r.get('ttft_p90'))} "
                    f"| {fmt(r.get('kib_per_stream'))} "
                    f"| {fmt(r.get('base_threads'))} → {fmt(r.get('peak_threads'))} "
                    f"| {fmt(r.get('base_db_connections'))} → {fmt(r.get('peak_db_connections'))} "
                    f"| {fmt(h['p50_ms']) + ' / ' + fmt(h['p99_ms']) + ' / ' + fmt(h['max_ms']) if h else '-'} |"
                )
        if earlier:
            r = earlier
            done = "timed out" if r.get("timed_out") else f"{r['failed']} / {r['wrong']}"
            lines.append(
                f"| earlier design (uvicorn) | {r['n']:,} | - | {fmt(r['wall_s'], 2)} | {fmt(r['ratio'], 2)} | {done} "
                f"| {fmt(r.get('ttft_p50'))} / {fmt(r.get('ttft_p90'))} | - | - | - | - |"
            )
        lines.append("")
    if "earlier" in results:
        b = results["earlier"]["burst"]
        if "timed_out_after_s" in b:
            lines += [
                f"Earlier design, burst of 20 at 1 s first token: timed out after {b['timed_out_after_s']:g} s.",
                "",
            ]
        else:
            lines += [
                f"Earlier design, burst of 20 at 1 s first token: p50 {fmt(b['ttft_p50'] / 1000, 2)} s, "
                f"p90 {fmt(b['ttft_p90'] / 1000, 2)} s, {b['failed']} failed.",
                "",
            ]
    if "db_work" in results:
        lines += [
            "### Database work per turn (daphne, query-counting entry point)",
            "",
            "| reply | deltas | SQL statements | commits | rows inserted | rows updated |",
            "|---|---|---|---|---|---|",
        ]
        for label, d in results["db_work"].items():
            lines.append(
                f"| {label} | {fmt(d['deltas_per_turn'], 0)} | {fmt(d['statements_per_turn'])} "
                f"| {fmt(d['commits_per_turn'])} | {fmt(d['inserted_per_turn'])} | {fmt(d['updated_per_turn'])} |"
            )
        lines.append("")
        for label, d in results["db_work"].items():
            kinds = ", ".join(f"{kind} {count:g}" for kind, count in d["statement_kinds_per_turn"].items())
            lines.append(f"- {label}: {kinds}")
        lines.append("")
    if "server_burst" in results:
        lines += [
            "### Documented server commands under a burst of connects",
            "",
            "| started as | command | connects at once, each sending | ok | failed (by kind) "
            "| connects over 1 s (SYN resent) | connect max ms | answer p50 / max ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["server_burst"]:
            errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items()))
            sends = "a short chat stream" if r["request"] == "stream" else "`GET /health`"
            lines.append(
                f"| {r['label']} | `{r['command']}` | {r['count']:,}, {sends} | {r['ok']:,} "
                f"| {r['failed']:,}{f' ({errors})' if errors else ''} | {r['connects_over_1s']:,} "
                f"| {fmt(r['connect_max_ms'], 0)} | {fmt(r['p50_ms'], 0)} / {fmt(r['max_ms'], 0)} |"
            )
        lines.append("")
    if "waits" in results:
        lines += ["### Cancel and resume latency (uvicorn)", "", waits.report(results["waits"]), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples and N = 100 only")
    parser.add_argument("--server", default="both", choices=("daphne", "uvicorn", "both"))
    parser.add_argument(
        "--db",
        default=os.environ.get("BENCH_DB", DEFAULT_DB),
        help=f"the database to drop, recreate and use (default $BENCH_DB or {DEFAULT_DB})",
    )
    parser.add_argument("--sizes", default=None, help="comma list of N (default 1000; --quick 100)")
    parser.add_argument("--token-delay-ms", type=float, default=50.0)
    parser.add_argument("--ttft-samples", type=int, default=None)
    parser.add_argument("--sync-samples", type=int, default=None)
    parser.add_argument("--throughput-total", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the throughput and flood steps")
    parser.add_argument("--flood-total", type=int, default=None, help="wrong-key requests in the flood step")
    parser.add_argument("--flood-samples", type=int, default=None, help="valid turns with and without the flood")
    parser.add_argument("--server-burst", type=int, default=1000, help="connects at once per server command")
    parser.add_argument(
        "--server-burst-request", default="stream", choices=("stream", "health"), help="what each connect sends"
    )
    parser.add_argument("--db-turns", type=int, default=None)
    parser.add_argument("--coze-poll-samples", type=int, default=None, help="create_and_poll samples")
    parser.add_argument("--wait-samples", type=int, default=None, help="cancels per row of the waits step")
    parser.add_argument("--earlier-n", type=int, default=None)
    parser.add_argument("--earlier-deadline", type=float, default=150.0)
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of: ttft, burst, sync, throughput, flood, cozepoll, streams, dbwork, earlier, waits, "
        "serverburst",
    )
    parser.add_argument(
        "--json", default=str(procs.LOG_DIR / "results.json"), help="where to write every number (JSON)"
    )
    parser.add_argument("--whatif", default="", help="nodb: see bench/whatif.py")
    parser.add_argument("--py-spy", default="", help="profile the gateway with py-spy; raw stacks go to this folder")
    args = parser.parse_args(argv)
    q = args.quick
    args.servers = ["daphne", "uvicorn"] if args.server == "both" else [args.server]
    args.sizes = [int(n) for n in (args.sizes or ("100" if q else "1000")).split(",")]
    args.ttft_samples = args.ttft_samples or (40 if q else 200)
    args.sync_samples = args.sync_samples or (5 if q else 15)
    args.throughput_total = args.throughput_total or (300 if q else 2000)
    args.flood_total = args.flood_total or (500 if q else 2000)
    args.flood_samples = args.flood_samples or (30 if q else 100)
    args.db_turns = args.db_turns or (5 if q else 20)
    args.coze_poll_samples = args.coze_poll_samples or (4 if q else 12)
    args.earlier_n = args.earlier_n or (20 if q else 100)
    args.wait_samples = args.wait_samples or (15 if q else 30)
    args.skip = [s for s in args.skip.split(",") if s]
    return args


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers we start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_file_limit()
    bench = Bench(args)
    bench.setup()
    try:
        results = uvloop.run(bench.run())
    finally:
        bench.teardown()
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(report(results))
    log(f"all numbers in {args.json}; server logs in {procs.LOG_DIR}")


if __name__ == "__main__":
    main()
