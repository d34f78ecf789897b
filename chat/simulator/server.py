"""Serving the simulator with uvicorn, in a background thread or in the foreground."""

from __future__ import annotations

import importlib.util
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from .app import SimulatorApp, SimulatorConfig, create_app
from .wire import SimulatedDrop

__all__ = ["SimulatorServer", "bind_socket", "uvicorn_config"]

BACKLOG = 4096


def _not_a_simulated_drop(record: logging.LogRecord) -> bool:
    """Keep uvicorn's log free of the tracebacks that ``[sim:drop]`` causes on purpose."""
    return not (record.exc_info and isinstance(record.exc_info[1], SimulatedDrop))


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: only then does asyncio recognise accepted connections as TCP and set
    # TCP_NODELAY on them; otherwise Nagle holds the first events back ~40 ms behind the headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def base_url_for(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_config(app: SimulatorApp, **overrides: Any) -> uvicorn.Config:
    """uvicorn settings tuned for many long-lived streams from one process."""
    options: dict[str, Any] = {
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "ws": "none",
        "loop": "asyncio",
        "lifespan": "off",
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "proxy_headers": False,
        "backlog": BACKLOG,
        "timeout_keep_alive": 30,
        "timeout_graceful_shutdown": 2,
    }
    options.update(overrides)
    config = uvicorn.Config(app, **options)  # may (re)configure logging
    logging.getLogger("uvicorn.error").addFilter(_not_a_simulated_drop)
    return config


class SimulatorServer:
    """The simulator served by uvicorn in a daemon thread.

    ``start()`` binds ``host:port`` (port 0: a free port), waits until the server accepts
    connections and returns ``base_url`` ("http://127.0.0.1:PORT"); ``stop()`` shuts it down
    (open streams get ``timeout_graceful_shutdown`` seconds, then are cancelled). Also a
    context manager. ``app`` is the ASGI app, whose ``state`` can be inspected in process.
    """

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SimulatorConfig()
        self.app = create_app(self.config)
        self.host = host
        self.port = port
        self.base_url: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; returns the base URL. Raises RuntimeError if it does not come up."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        base_url = base_url_for(sock)
        # The host process owns logging: don't let uvicorn reconfigure it.
        server = uvicorn.Server(uvicorn_config(self.app, log_config=None))
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"coze-simulator-{self.port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Coze simulator did not start on {base_url}")
            time.sleep(0.01)
        with socket.create_connection(sock.getsockname()[:2], timeout=timeout):
            pass
        self.base_url = base_url
        return base_url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the server thread to end."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = None
        self.base_url = None

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
