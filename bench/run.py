"""The streaming benchmark: the gateway against calling Coze directly with cozepy, on one machine.

    python -m bench.run                      # everything, daphne and uvicorn (about 8 minutes)
    python -m bench.run --quick              # smaller samples, N = 100 only
    python -m bench.run --server daphne --sizes 1000 --skip earlier,throughput

It starts, each as its own process: the built-in Coze simulator (20 tokens at 50 ms by default),
the gateway under daphne and/or uvicorn (Postgres database `cozeproject_bench`, recreated and
migrated), and the earlier design (sync cozepy iterated in an async generator, under uvicorn).
The clients run in this process on uvloop. Steps:

1. time to first token, sequential samples interleaved: direct cozepy, SSE, WebSocket;
2. a burst of 20 streams whose upstream takes 1 s to the first token;
3. N concurrent streams (fresh server per N): wall time against N direct cozepy streams, failed or
   wrong streams, server RSS per open stream, threads and database connections at peak;
4. sync `POST /api/chat` latency against the direct stream's completion time;
5. short sync chats per second on one worker;
6. database statements and transactions per turn, short reply against a long one;
7. the earlier design under the same burst and N.

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
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop
from websockets.asyncio.client import connect as ws_connect

from bench import clients, procs
from bench.clients import HttpClient

DB_NAME = "cozeproject_bench"
# 50 code points: the simulator splits it into exactly 20 deltas (1, 2, 3, 4 code points, …).
ANSWER = ("Twenty deltas, ümlaut → ✓ and digits 0123456789. " * 2)[:50]
SHORT_ANSWER = "Hi there!"


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

    def post(self, client: HttpClient, path: str, text: str, session_id: str) -> bytes:
        body = json.dumps({"message": text, "session_id": session_id}).encode()
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        return client.request_bytes("POST", path, body, headers)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
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
        log(f"database {DB_NAME}: recreate and migrate")
        procs.recreate_database(DB_NAME)
        self.key = procs.create_api_key(DB_NAME)
        self.db = procs.DbWatch(DB_NAME)
        self.sim = procs.Simulator(token_delay_ms=self.args.token_delay_ms).start()
        log(f"simulator at {self.sim.url} ({self.args.token_delay_ms} ms between tokens)")
        self.direct, _ = clients.direct_client(self.sim.url, procs.SIM_TOKEN)

    def gateway(self, kind: str, app: str = "", name: str = "gateway", **env) -> Target:
        if not app and self.args.whatif:
            app, env = "bench.whatif:application", {**env, "BENCH_WHATIF": self.args.whatif}
        app = app or "cozeproject.asgi:application"
        prefix = []
        if self.args.py_spy and name == "gateway":
            out = Path(self.args.py_spy) / f"{kind}-{self.seq}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            # --gil: only samples holding the GIL, i.e. CPU attribution; --nonblocking: don't pause the server.
            spy = [str(procs.BIN / "py-spy"), "record", "--gil", "--nonblocking", "-f", "raw", "-r", "100"]
            prefix = [*spy, "-o", str(out), "--"]
        server = procs.Server(
            kind=kind,
            app=app,
            env=procs.gateway_env(DB_NAME, sim_url=self.sim.url, **env),
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
        results = await asyncio.gather(
            *(
                clients.sse_stream(
                    client, target.post(client, "/api/chat/stream", message(ANSWER, "slow=1"), self.session("warm"))
                )
                for _ in range(count)
            )
        )
        client.close()
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"warm-up failed: {bad[:3]}")

    async def ttft(self, target: Target, samples: int) -> dict:
        """Sequential chats, interleaved direct / SSE / WebSocket, each on a kept-alive connection."""
        text = message(ANSWER, "slow=1")  # first token timing only; a fast tail keeps samples short
        client = target.http()
        direct, sse, ws, wrong = [], [], [], 0
        headers = {"Authorization": f"Bearer {target.key}"}
        async with ws_connect(f"ws://127.0.0.1:{target.server.port}/ws/chat/", additional_headers=headers) as sock:
            for i in range(samples + 5):
                runs = [
                    ("direct", clients.direct_stream(self.direct, bot_id=procs.BOT_ID, message=text)),
                    (
                        "sse",
                        clients.sse_stream(client, target.post(client, "/api/chat/stream", text, self.session("t"))),
                    ),
                    ("ws", clients.ws_chat(sock, text, self.session("w"))),
                ]
                for name, run in runs[i % 3 :] + runs[: i % 3]:
                    result = await run
                    result.check(ANSWER, need_completed=name != "direct")
                    if not result.ok:
                        wrong += 1
                        continue
                    if i >= 5:  # the first rounds warm caches and connections
                        {"direct": direct, "sse": sse, "ws": ws}[name].append(result.ttft_ms)
                    await asyncio.sleep(0.002)
        client.close()
        out = {"samples": samples, "wrong": wrong}
        for name, values in (("direct", direct), ("sse", sse), ("ws", ws)):
            out[name] = {"p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99)}
        for name in ("sse", "ws"):
            out[f"{name}_added"] = {q: out[name][q] - out["direct"][q] for q in ("p50", "p90")}
        return out

    async def burst(self, target: Target | None, count: int = 20, deadline: float = 60.0) -> dict:
        """`count` streams at once; the upstream's first token takes 1 s."""
        text = message(ANSWER, "first_delay=1000")
        if target is None:
            runs = [clients.direct_stream(self.direct, bot_id=procs.BOT_ID, message=text) for _ in range(count)]
        else:
            client = target.http()
            runs = [
                clients.sse_stream(client, target.post(client, "/api/chat/stream", text, self.session("b")))
                for _ in range(count)
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

    async def streams(self, target: Target | None, n: int, deadline: float = 300.0, sample: bool = True) -> dict:
        """N streams at once, direct (target None) or through the gateway; samples the server meanwhile."""
        text = message(ANSWER)
        sampler = None
        if target is None:
            direct, pool = clients.direct_client(self.sim.url, procs.SIM_TOKEN)
            runs = [clients.direct_stream(direct, bot_id=procs.BOT_ID, message=text) for _ in range(n)]
        else:
            client = target.http(keep_alive=False)
            runs = [
                clients.sse_stream(client, target.post(client, "/api/chat/stream", text, self.session(f"n{n}")))
                for _ in range(n)
            ]
            if sample:
                sampler = Sampler(target.server.process(), self.db)
                sampler.begin()
                sampler.task = asyncio.create_task(sampler.run())
        started = clients.now()
        try:
            results = await asyncio.wait_for(asyncio.gather(*runs), deadline)
        except TimeoutError:
            results = None
        wall = clients.now() - started
        if target is None:
            await pool.aclose()
        out: dict = {"n": n, "wall_s": wall}
        if sampler is not None:
            out.update(await sampler.finish(n))
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

    async def sync_latency(self, target: Target, samples: int) -> dict:
        """`POST /api/chat` against the direct stream's completion, sequential and interleaved."""
        text = message(ANSWER)
        client = target.http()
        sync, direct, bad = [], [], 0
        for _ in range(samples):
            result = await clients.direct_stream(self.direct, bot_id=procs.BOT_ID, message=text)
            result.check(ANSWER, need_completed=False)
            if result.ok:
                direct.append(result.duration_ms)
            else:
                bad += 1
            request = target.post(client, "/api/chat", text, self.session("s"))
            status, body, t0, t1 = await clients.json_request(client, request)
            if status == 200 and json.loads(body)["response"] == ANSWER:
                sync.append((t1 - t0) * 1000)
            else:
                bad += 1
        client.close()
        return {
            "samples": samples,
            "bad": bad,
            "sync_p50_ms": pct(sync, 50),
            "direct_p50_ms": pct(direct, 50),
            "ratio": pct(sync, 50) / pct(direct, 50),
        }

    async def throughput(self, target: Target, total: int, concurrency: int) -> dict:
        """Short sync chats (no token delay), closed loop: chats per second on one worker."""
        text = message(SHORT_ANSWER, "slow=0")
        latencies: list[float] = []
        bad = 0
        remaining = total
        proc = target.server.process()

        async def worker() -> None:
            nonlocal remaining, bad
            client = target.http()
            while remaining > 0:
                remaining -= 1
                status, body, t0, t1 = await clients.json_request(
                    client, target.post(client, "/api/chat", text, self.session("q"))
                )
                if status == 200 and json.loads(body)["response"] == SHORT_ANSWER:
                    latencies.append((t1 - t0) * 1000)
                else:
                    bad += 1
            client.close()

        proc.cpu_percent()
        started = clients.now()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = clients.now() - started
        return {
            "total": total,
            "concurrency": concurrency,
            "bad": bad,
            "per_s": len(latencies) / wall,
            "p50_ms": pct(latencies, 50),
            "p90_ms": pct(latencies, 90),
            "server_cpu_percent": proc.cpu_percent(),
        }

    async def db_work(self, turns: int) -> dict:
        """SQL statements per turn for a short (20 deltas) and a long (2,000 deltas) reply.

        Statements are counted by the gateway itself (bench.counting); transactions and rows from
        pg_stat_database, which idle backends flush only every 10 s, hence the waits.
        """
        target = self.gateway("daphne", app="bench.counting:application", name="counting")
        try:
            await self.warm_up(target, 5)
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
                        client, target.post(client, "/api/chat/stream", message(answer, *directives), self.session("d"))
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
            if not skip >= {"ttft", "burst", "sync", "throughput"}:
                log(f"{kind}: start")
                target = self.gateway(kind)
                try:
                    await self.warm_up(target)
                    if "ttft" not in skip:
                        log(f"{kind}: time to first token, {args.ttft_samples} samples per transport")
                        res["ttft"] = await self.ttft(target, args.ttft_samples)
                    if "burst" not in skip:
                        log(f"{kind}: burst of 20 with a 1 s first token")
                        res["burst_direct"] = await self.burst(None)
                        res["burst"] = await self.burst(target)
                    if "sync" not in skip:
                        log(f"{kind}: sync latency, {args.sync_samples} samples")
                        res["sync"] = await self.sync_latency(target, args.sync_samples)
                    if "throughput" not in skip:
                        log(f"{kind}: short sync chats per second")
                        res["throughput"] = await self.throughput(target, args.throughput_total, args.concurrency)
                finally:
                    target.server.stop()
            if "streams" not in skip:
                res["streams"] = []
                for n in args.sizes:
                    log(f"{kind}: {n} concurrent streams (fresh server)")
                    target = self.gateway(kind)
                    try:
                        await self.warm_up(target)
                        await asyncio.sleep(0.5)
                        direct = await self.streams(None, n)
                        await asyncio.sleep(0.5)
                        gateway = await self.streams(target, n)
                    finally:
                        target.server.stop()
                    gateway["direct_wall_s"] = direct["wall_s"]
                    gateway["direct_failed"] = direct["failed"] + direct["wrong"]
                    gateway["ratio"] = gateway["wall_s"] / direct["wall_s"]
                    res["streams"].append(gateway)
                    log(f"{kind}: N={n} ratio {gateway['ratio']:.3f} failed {gateway['failed']}")
        if "dbwork" not in skip:
            log("database work per turn (query-counting gateway)")
            self.results["db_work"] = await self.db_work(args.db_turns)
        if "earlier" not in skip:
            log("earlier design (sync cozepy in an async generator, uvicorn)")
            server = procs.Server(
                kind="uvicorn",
                app="bench.earlier_design:app",
                env=procs.gateway_env(DB_NAME, sim_url=self.sim.url),
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
        return self.results


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
        while not self.stopped:
            self.samples.append(
                (clients.OPEN[0], self.proc.memory_info().rss, self.proc.num_threads(), self.db.connections())
            )
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
        return f"{value:.{digits}f}"
    return str(value)


def report(results: dict) -> str:
    m = results["machine"]
    a = results["args"]
    lines = [
        f"Machine: {m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}; "
        "simulator, gateway, Postgres and clients share it.",
        f"Upstream: {a['token_delay_ms']:g} ms between tokens, 20 deltas per reply. "
        f"Load average at start {m['load_average_at_start']}, at end {results.get('load_average_at_end')}.",
        "",
    ]
    servers = results["servers"]
    if any("ttft" in s for s in servers.values()):
        lines += [
            "### Time to first token (ms, sequential)",
            "",
            "| server | direct p50 | SSE p50 | SSE p90 | WS p50 | WS p90 | SSE added p50 / p90 | WS added p50 / p90 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for kind, s in servers.items():
            t = s.get("ttft")
            if t:
                lines.append(
                    f"| {kind} | {fmt(t['direct']['p50'], 2)} | {fmt(t['sse']['p50'], 2)} | {fmt(t['sse']['p90'], 2)} "
                    f"| {fmt(t['ws']['p50'], 2)} | {fmt(t['ws']['p90'], 2)} "
                    f"| {fmt(t['sse_added']['p50'], 2)} / {fmt(t['sse_added']['p90'], 2)} "
                    f"| {fmt(t['ws_added']['p50'], 2)} / {fmt(t['ws_added']['p90'], 2)} |"
                )
        lines.append("")
    rows = [(kind, row) for kind, s in servers.items() for row in s.get("streams", [])]
    earlier = results.get("earlier", {}).get("streams")
    if rows or earlier:
        lines += [
            "### Concurrent streams",
            "",
            "| server | N | direct wall s | gateway wall s | ratio | failed / wrong | TTFT p50 / p90 ms "
            "| KiB per stream | threads base → peak | DB conns base → peak |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind, r in rows:
            lines.append(
                f"| {kind} | {r['n']} | {fmt(r['direct_wall_s'], 2)} | {fmt(r['wall_s'], 2)} | {fmt(r['ratio'], 3)} "
                f"| {r['failed']} / {r['wrong']} | {fmt(r.get('ttft_p50'))} / {fmt(r.get('ttft_p90'))} "
                f"| {fmt(r.get('kib_per_stream'))} | {r.get('base_threads')} → {r.get('peak_threads')} "
                f"| {r.get('base_db_connections')} → {r.get('peak_db_connections')} |"
            )
        if earlier:
            r = earlier
            done = "timed out" if r.get("timed_out") else f"{r['failed']} / {r['wrong']}"
            lines.append(
                f"| earlier design (uvicorn) | {r['n']} | {fmt(r['direct_wall_s'], 2)} | {fmt(r['wall_s'], 2)} "
                f"| {fmt(r['ratio'], 2)} | {done} | {fmt(r.get('ttft_p50'))} / {fmt(r.get('ttft_p90'))} | - | - | - |"
            )
        lines.append("")
    burst_rows = [(kind, s["burst"], s.get("burst_direct")) for kind, s in servers.items() if "burst" in s]
    if "earlier" in results:
        burst_rows.append(("earlier design (uvicorn)", results["earlier"]["burst"], None))
    if burst_rows:
        lines += [
            "### Burst: 20 new streams, upstream first token after 1 s (client TTFT, ms)",
            "",
            "| server | p50 | p90 | max | failed | direct p90 |",
            "|---|---|---|---|---|---|",
        ]
        for kind, b, d in burst_rows:
            if "timed_out_after_s" in b:
                lines.append(f"| {kind} | > {b['timed_out_after_s'] * 1000:.0f} | | | timed out | |")
                continue
            lines.append(
                f"| {kind} | {fmt(b['ttft_p50'])} | {fmt(b['ttft_p90'])} | {fmt(b['ttft_max'])} | {b['failed']} "
                f"| {fmt(d['ttft_p90']) if d else '-'} |"
            )
        lines.append("")
    sync_rows = [(kind, s["sync"]) for kind, s in servers.items() if "sync" in s]
    if sync_rows:
        lines += [
            "### Sync chat (`POST /api/chat`) against the direct stream's completion",
            "",
            "| server | sync p50 ms | direct completion p50 ms | ratio |",
            "|---|---|---|---|",
        ]
        for kind, s in sync_rows:
            lines.append(f"| {kind} | {fmt(s['sync_p50_ms'])} | {fmt(s['direct_p50_ms'])} | {fmt(s['ratio'], 3)} |")
        lines.append("")
    tp_rows = [(kind, s["throughput"]) for kind, s in servers.items() if "throughput" in s]
    if tp_rows:
        lines += [
            "### Short sync chats on one worker",
            "",
            "| server | chats/s | p50 ms | p90 ms | concurrency | server CPU % | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, t in tp_rows:
            lines.append(
                f"| {kind} | {fmt(t['per_s'])} | {fmt(t['p50_ms'])} | {fmt(t['p90_ms'])} | {t['concurrency']} "
                f"| {fmt(t['server_cpu_percent'], 0)} | {t['bad']} |"
            )
        lines.append("")
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
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples and N = 100 only")
    parser.add_argument("--server", default="both", choices=("daphne", "uvicorn", "both"))
    parser.add_argument("--sizes", default=None, help="comma list of N (default 100,500,1000)")
    parser.add_argument("--token-delay-ms", type=float, default=50.0)
    parser.add_argument("--ttft-samples", type=int, default=None)
    parser.add_argument("--sync-samples", type=int, default=None)
    parser.add_argument("--throughput-total", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the throughput step")
    parser.add_argument("--db-turns", type=int, default=None)
    parser.add_argument("--earlier-n", type=int, default=None)
    parser.add_argument("--earlier-deadline", type=float, default=150.0)
    parser.add_argument(
        "--skip", default="", help="comma list of: ttft, burst, sync, throughput, streams, dbwork, earlier"
    )
    parser.add_argument(
        "--json", default=str(procs.LOG_DIR / "results.json"), help="where to write every number (JSON)"
    )
    parser.add_argument("--whatif", default="", help="nodb and/or lean: see bench/whatif.py")
    parser.add_argument("--py-spy", default="", help="profile the gateway with py-spy; raw stacks go to this folder")
    args = parser.parse_args(argv)
    q = args.quick
    args.servers = ["daphne", "uvicorn"] if args.server == "both" else [args.server]
    args.sizes = [int(n) for n in (args.sizes or ("100" if q else "100,500,1000")).split(",")]
    args.ttft_samples = args.ttft_samples or (40 if q else 200)
    args.sync_samples = args.sync_samples or (5 if q else 15)
    args.throughput_total = args.throughput_total or (300 if q else 2000)
    args.db_turns = args.db_turns or (5 if q else 20)
    args.earlier_n = args.earlier_n or (20 if q else 100)
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
