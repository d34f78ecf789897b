"""Serve the Coze simulator for the benchmark: `python -m chat.simulator`, with TCP_NODELAY.

`chat.simulator.server.bind_socket` creates its listening socket with protocol 0, so asyncio's
transports don't recognise the accepted connections as TCP and leave Nagle's algorithm on. The
simulator writes the response headers and the first events separately; with Nagle the events
wait for the client's delayed ACK, about 40 ms, before they leave. Real Coze answers without that
stall, so the benchmark binds the socket with IPPROTO_TCP (asyncio then sets TCP_NODELAY).
"""

import argparse
import socket

import uvicorn

from chat.simulator.app import SimulatorConfig, create_app
from chat.simulator.server import uvicorn_config


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=None)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = SimulatorConfig(
        token=args.token, token_delay_ms=args.token_delay_ms, first_token_delay_ms=args.first_token_delay_ms
    )
    uvicorn.Server(uvicorn_config(create_app(config))).run(sockets=[sock])


if __name__ == "__main__":
    main()
