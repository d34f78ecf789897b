"""Retention and export at scale: prune throughput, a chat turn's time to first token while the
prune runs, and the export's memory.

Seed a database first (docs/admin.md, "Built for big tables"), then:

    python -m bench.retention_bench --source coze_bench --days 45

It never touches `--source`: the prune runs on a copy (`CREATE DATABASE … TEMPLATE`, so nothing
may be connected to the source meanwhile), dropped at the end unless `--keep`.

1. A gateway (daphne) and the Coze simulator start against the copy, and one client sends chat
   turns over SSE back to back, measuring each one's time to first token: for `--baseline`
   seconds before the prune, for as long as it runs, and `--after` seconds after it.
2. `manage.py prune_chat_data --days N --noinput` runs on the copy in its own process; its wall
   time and summary line give the throughput (messages a second).
3. `manage.py export_chat_data --since DATE --output /dev/null` runs on the copy (after the
   prune: what is left) or on `--export-database`, sampling its resident memory every 50 ms.

Prints one table of the figures (Markdown), for docs/performance.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import threading
import time
from datetime import date, timedelta

import httpx
import psutil
import psycopg

from bench.procs import (
    PG_ADMIN,
    PYTHON,
    ROOT,
    Server,
    Simulator,
    create_api_key,
    gateway_env,
)


def copy_database(source: str, target: str) -> float:
    started = time.monotonic()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{target}" TEMPLATE "{source}"')
    return time.monotonic() - started


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TurnSampler(threading.Thread):
    """Sends chat turns over SSE one after another; records (start time, TTFT ms, ok)."""

    def __init__(self, base_url: str, key: str):
        super().__init__(daemon=True, name="turns")
        self.base_url, self.key = base_url, key
        self.samples: list[tuple[float, float | None, bool]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        number = 0
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as client:
            while not self.stopped.is_set():
                number += 1
                # A few sessions in turn: each turn continues one, as devices do.
                body = {"message": f"hello {number}", "session_id": f"bench-prune-{number % 5}"}
                started = time.monotonic()
                ttft, ok = None, False
                try:
                    with client.stream("POST", "/api/chat/stream", json=body) as response:
                        for line in response.iter_lines():
                            if ttft is None and line.startswith("event: delta"):
                                ttft = (time.monotonic() - started) * 1000
                            if line == "data: [DONE]":
                                ok = response.status_code == 200
                                break
                except httpx.HTTPError:
                    ok = False
                self.samples.append((started, ttft, ok))

    def between(self, start: float, end: float) -> list[float]:
        return [ttft for started, ttft, ok in self.samples if start <= started < end and ok and ttft is not None]

    def failures(self) -> int:
        return sum(1 for _, _, ok in self.samples if not ok)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def describe(values: list[float]) -> str:
    if not values:
        return "no turns"
    return (
        f"{len(values)} turns, p50 {statistics.median(values):.0f} ms, p95 {percentile(values, 0.95):.0f} ms, "
        f"max {max(values):.0f} ms"
    )


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, str, int]:
    """Run a manage.py command; returns its wall time, its stdout+stderr and its peak RSS (bytes)."""
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    watched = psutil.Process(proc.pid)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    proc.wait()
    reader.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command[1:4])} failed:\n{''.join(output)[-2000:]}")
    return time.monotonic() - started, "".join(output), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="A seeded database (left untouched).")
    parser.add_argument("--copy", default="", help="Name of the copy (default: <source>_prune).")
    parser.add_argument("--days", type=int, default=45, help="The prune's window (default 45 of 90 seeded days).")
    parser.add_argument("--baseline", type=float, default=15.0, help="Seconds of turns before the prune.")
    parser.add_argument("--after", type=float, default=5.0, help="Seconds of turns after it.")
    parser.add_argument("--export-since", default="", help="YYYY-MM-DD for the export (default: --days ago).")
    parser.add_argument("--keep", action="store_true", help="Keep the copy afterwards.")
    args = parser.parse_args()
    copy = args.copy or f"{args.source}_prune"

    print(f"Copying {args.source} to {copy} …", flush=True)
    copied = copy_database(args.source, copy)
    print(f"  {copied:.0f} s", flush=True)
    simulator = Simulator(token_delay_ms=20).start()
    env = gateway_env(copy, sim_url=simulator.url)
    server = Server("daphne", "cozeproject.asgi:application", env, name="retention").start()
    sampler = None
    try:
        key = create_api_key(copy)
        sampler = TurnSampler(f"http://127.0.0.1:{server.port}", key)
        sampler.start()
        time.sleep(args.baseline)
        prune_started = time.monotonic()
        print(f"Pruning (--days {args.days}) …", flush=True)
        took, output, prune_rss = run_measured(
            [PYTHON, "manage.py", "prune_chat_data", "--days", str(args.days), "--noinput"], env
        )
        prune_ended = time.monotonic()
        time.sleep(args.after)
        sampler.stopped.set()
        sampler.join(60)
        summary = output.strip().splitlines()[-1]
        messages = int(re.search(r"([\d,]+) messages?", summary).group(1).replace(",", ""))

        since = args.export_since or (date.today() - timedelta(days=args.days)).isoformat()
        print(f"Exporting conversations active since {since} …", flush=True)
        export_took, export_output, export_rss = run_measured(
            [PYTHON, "manage.py", "export_chat_data", "--since", since, "--output", "/dev/null"], env
        )
        export_line = export_output.strip().splitlines()[-1]

        before = sampler.between(0, prune_started)
        during = sampler.between(prune_started, prune_ended)
        after = sampler.between(prune_ended, float("inf"))
        print()
        print("| measurement | result |")
        print("|---|---|")
        print(f"| prune `--days {args.days}` | {summary} |")
        print(f"| prune wall time | {took:.1f} s: {messages / took:,.0f} messages a second |")
        print(f"| prune process peak RSS | {prune_rss / 2**20:.0f} MiB |")
        print(f"| TTFT before the prune | {describe(before)} |")
        print(f"| TTFT during the prune | {describe(during)} |")
        print(f"| TTFT after the prune | {describe(after)} |")
        print(f"| turns that failed | {sampler.failures()} |")
        print(f"| export | {export_line} |")
        print(f"| export wall time / peak RSS | {export_took:.1f} s / {export_rss / 2**20:.0f} MiB |")
    finally:
        if sampler is not None:
            sampler.stopped.set()
        server.stop()
        simulator.stop()
        if not args.keep:
            drop_database(copy)


if __name__ == "__main__":
    main()
