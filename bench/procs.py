"""The processes of a benchmark run: database, Coze simulator, gateway servers.

Each runs as its own OS process so that its CPU use and memory are its own: the simulator does
not share the gateway's event loop, and psutil reads the gateway's RSS and threads alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
SIM_TOKEN = "bench-token"
BOT_ID = "7000000000000000001"
LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/cozeproject-bench"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[:3]} exited with {proc.returncode}; see {LOG_DIR}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Stop one process we started (SIGTERM, then SIGKILL), by its pid only.

    Not SIGINT: a benchmark started in the background of a shell inherits SIGINT ignored."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _log(name: str):
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return open(LOG_DIR / f"{name}.log", "ab")


# --- database ------------------------------------------------------------------------------------


def database_url(name: str) -> str:
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def recreate_database(name: str) -> None:
    """Drop and create the benchmark database (only this one), then migrate it."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=gateway_env(name, sim_url="http://127.0.0.1:1"),
        check=True,
    )


def create_api_key(db: str) -> str:
    out = subprocess.run(
        [PYTHON, "manage.py", "create_api_key", "bench"],
        cwd=ROOT,
        env=gateway_env(db, sim_url="http://127.0.0.1:1"),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


class DbWatch:
    """Counts the database's open connections (`pg_stat_activity`) from the admin database."""

    def __init__(self, db: str):
        self.db = db
        self.conn = psycopg.connect(PG_ADMIN, autocommit=True)

    def connections(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.db,)).fetchone()
        return int(row[0])

    def stats(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_returned, tup_fetched "
            "FROM pg_stat_database WHERE datname = %s",
            (self.db,),
        ).fetchone()
        return dict(zip(("commits", "inserted", "updated", "returned", "fetched"), map(int, row), strict=True))

    def close(self) -> None:
        self.conn.close()


# --- simulator -------------------------------------------------------------------------------------


@dataclass
class Simulator:
    token_delay_ms: float
    proc: subprocess.Popen | None = None
    url: str = ""

    def start(self) -> Simulator:
        port, delay = free_port(), str(self.token_delay_ms)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.simulator", "--port", str(port), "--token", SIM_TOKEN, "--token-delay-ms", delay],
            cwd=ROOT,
            stdout=_log("simulator"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(port, self.proc)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        stop(self.proc)


# --- gateway -----------------------------------------------------------------------------------------


def gateway_env(db: str, *, sim_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "COZE_", "CHAT_", "DATABASE_"))}
    env.update(
        DJANGO_SECRET_KEY="bench-secret-key-not-for-production-0123456789abcdef",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_LOG_LEVEL="WARNING",
        DATABASE_URL=database_url(db),
        COZE_API_TOKEN=SIM_TOKEN,
        COZE_BASE_URL=sim_url,
        COZE_BOT_ID=BOT_ID,
        CHAT_ALLOW_ANONYMOUS="0",
        # One API key drives every stream: the per-owner limits would refuse most of them.
        CHAT_RATE_LIMIT_PER_MINUTE="0",
        CHAT_MAX_CONCURRENT_STREAMS="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)
    env.update(extra)
    return env


@dataclass
class Server:
    """The gateway (or the earlier design) served by daphne or uvicorn in its own process."""

    kind: str  # daphne | uvicorn
    app: str  # module:attribute
    env: dict[str, str]
    name: str = "gateway"
    prefix: list[str] = field(default_factory=list)  # e.g. py-spy record … --
    proc: subprocess.Popen | None = None
    port: int = 0

    def command(self) -> list[str]:
        if self.kind == "daphne":
            # Twisted's default listen backlog is 50: a burst of 1,000 connects would overflow it and
            # wait for SYN retransmits (1 s, 3 s, …). -v 0 turns off the per-request access log.
            endpoint = f"tcp:port={self.port}:interface=127.0.0.1:backlog=4096"
            return [str(BIN / "daphne"), "-v", "0", "-e", endpoint, self.app]
        if self.kind == "uvicorn":
            return [
                str(BIN / "uvicorn"),
                self.app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--ws",
                "websockets",
                "--lifespan",
                "off",
                "--no-access-log",
                "--log-level",
                "warning",
                "--backlog",
                "4096",
            ]
        raise ValueError(self.kind)

    def start(self) -> Server:
        self.port = free_port()
        self.proc = subprocess.Popen(
            self.prefix + self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=_log(f"{self.name}-{self.kind}"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)
        return self

    def process(self) -> psutil.Process:
        """The Python process serving requests (py-spy's child when profiled)."""
        proc = psutil.Process(self.proc.pid)
        if self.prefix:
            children = proc.children()
            if children:
                return children[0]
        return proc

    def stop(self) -> None:
        if self.prefix and self.proc is not None and self.proc.poll() is None:
            # py-spy writes its profile on SIGINT; then stop the server it was sampling.
            child = self.process()
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
            if child.pid != self.proc.pid and child.is_running():
                child.terminate()
                with contextlib.suppress(psutil.TimeoutExpired):
                    child.wait(10)
        stop(self.proc)
