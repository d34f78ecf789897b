"""The documented ways to start the server, each under a burst of 1,000 simultaneous connects.

The command lines are read from the files themselves, not copied: the `web:` line of `Procfile`
(run by bash with `PORT` set, as a Procfile platform does) and the `daphne` line of
`scripts/serve` (with `HOST` and `PORT` set; the script's own set-up — virtualenv, migrate — is
not repeated: the benchmark's database is already migrated). Each server gets 1,000 connects at
once, each sending a short chat stream (20 deltas 1 ms apart, with the benchmark's API key) or
`GET /health` and reading the whole answer; a connection reset, a refused or timed
out connect, or anything but a 200 `ok` counts as failed, and a connect that took over a second
(its SYN dropped by a full accept queue and sent again) is counted apart. The `-b`/`-p` form the Procfile used before
(Twisted's default listen backlog of 50) runs too, as the reference that shows what is caught.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass

from bench import procs
from bench.clients import HttpClient, _Conn

OLD_PROCFILE_WEB = "daphne -b 0.0.0.0 -p ${PORT:-8000} --proxy-headers cozeproject.asgi:application"


def procfile_web() -> str:
    for line in (procs.ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("Procfile has no web: line")


def serve_script_daphne() -> str:
    for line in (procs.ROOT / "scripts" / "serve").read_text().splitlines():
        if re.match(r"\s*(exec\s+)?daphne\s", line):
            return line.strip()
    raise RuntimeError("scripts/serve starts no daphne")


def commands() -> list[tuple[str, str]]:
    return [
        ("Procfile `web:`", procfile_web()),
        ("scripts/serve", serve_script_daphne()),
        ("before: `daphne -b … -p …` (reference)", OLD_PROCFILE_WEB),
    ]


@dataclass
class ShellServer:
    """A server started by bash from a documented command line."""

    label: str
    command: str
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    port: int = 0

    def start(self) -> ShellServer:
        self.port = procs.free_port()
        env = {**self.env, "PORT": str(self.port), "HOST": "127.0.0.1", "PATH": f"{procs.BIN}:{os.environ['PATH']}"}
        name = "burst-" + re.sub(r"\W+", "-", self.label).strip("-").lower()
        self.proc = subprocess.Popen(
            ["bash", "-c", self.command],
            cwd=procs.ROOT,
            env=env,
            stdout=procs._log(name),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that stop() reaches daphne even when bash does not exec it
        )
        procs.wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        procs.stop(self.proc)


async def one(port: int, request: bytes, deadline: float) -> tuple[str, float, float]:
    """Connect, send `request`, read the answer: (error or "", connect seconds, total seconds)."""
    loop = asyncio.get_running_loop()
    client = HttpClient("127.0.0.1", port, keep_alive=False)
    started = time.perf_counter()
    connected = started
    try:
        _, conn = await asyncio.wait_for(loop.create_connection(lambda: _Conn(client), "127.0.0.1", port), deadline)
        connected = time.perf_counter()
        body = bytearray()
        status = await asyncio.wait_for(conn.start(request, lambda piece, at: body.extend(piece)), deadline)
        conn.transport.close()
    except TimeoutError:
        return "timeout", connected - started, time.perf_counter() - started
    except Exception as exc:
        return type(exc).__name__, connected - started, time.perf_counter() - started
    if status != 200:
        error = f"HTTP {status}"
    elif not (b'"status":"ok"' in body or (b"event: completed" in body and b"event: done" in body)):
        error = "incomplete answer"
    else:
        error = ""
    return error, connected - started, time.perf_counter() - started


def request_bytes(port: int, kind: str, key: str) -> bytes:
    """`GET /health`, or a short chat stream (20 deltas 1 ms apart) with the benchmark's API key."""
    client = HttpClient("127.0.0.1", port, keep_alive=False)
    if kind == "health":
        return client.request_bytes("GET", "/health", b"", {})
    body = json.dumps({"message": "[sim:slow=1][sim:echo]" + "burst " * 8}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return client.request_bytes("POST", "/api/chat/stream", body, headers)


async def burst(port: int, request: bytes, count: int = 1000, deadline: float = 60.0) -> dict:
    """`count` connects at once, each sending `request` and reading the whole answer."""
    results = await asyncio.gather(*(one(port, request, deadline) for _ in range(count)))
    errors: dict[str, int] = {}
    for error, _, _ in results:
        if error:
            errors[error] = errors.get(error, 0) + 1
    connects = sorted(c for _, c, _ in results)
    times = sorted(t for error, _, t in results if not error)
    return {
        "count": count,
        "ok": len(times),
        "failed": count - len(times),
        "errors": errors,
        # Over a second to connect: the SYN was dropped (a full accept queue) and retransmitted.
        "connects_over_1s": sum(c > 1.0 for c in connects),
        "connect_max_ms": connects[-1] * 1000,
        "p50_ms": times[len(times) // 2] * 1000 if times else None,
        "max_ms": times[-1] * 1000 if times else None,
    }


async def run(env: dict[str, str], *, key: str, count: int = 1000, kind: str = "stream") -> list[dict]:
    out = []
    for label, command in commands():
        server = ShellServer(label, command, env).start()
        try:
            await asyncio.sleep(0.5)
            result = await burst(server.port, request_bytes(server.port, kind, key), count)
            result["request"] = kind
        finally:
            server.stop()
        out.append({"label": label, "command": command, **result})
    return out
