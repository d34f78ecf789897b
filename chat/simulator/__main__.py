"""``python -m chat.simulator``: run the Coze simulator in the foreground (Ctrl+C stops it)."""

from __future__ import annotations

import argparse

import uvicorn

from .app import SimulatorConfig, create_app
from .server import base_url_for, bind_socket, uvicorn_config
from .state import COZE_MAX_UPLOAD_BYTES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chat.simulator", description="Run the built-in Coze simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--token", default=None, help="require this Bearer token")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--first-token-delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--max-upload-bytes", type=int, default=COZE_MAX_UPLOAD_BYTES, help="largest file /v1/files/upload takes"
    )
    parser.add_argument(
        "--studio", action="store_true", help="answer as a self-hosted Coze Studio (see chat/simulator/app.py)"
    )
    args = parser.parse_args(argv)

    config = SimulatorConfig(
        token=args.token,
        token_delay_ms=args.token_delay_ms,
        first_token_delay_ms=args.first_token_delay_ms,
        max_upload_bytes=args.max_upload_bytes,
        studio=args.studio,
    )
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as error:
        parser.exit(1, f"cannot listen on {args.host}:{args.port}: {error}\n")
    print(base_url_for(sock), flush=True)
    try:
        uvicorn.Server(uvicorn_config(create_app(config))).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown
        pass


if __name__ == "__main__":
    main()
