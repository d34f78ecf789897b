"""How much a large upload grows the server's memory (docs/api.md §12): the gateway under daphne and
under uvicorn, a 50 MiB file to each upload path (`/api/files`, Coze's `/v1/files/upload`), sent
with a Content-Length and chunked (no length), each through to the Coze simulator.

    python -m bench.upload_memory [--mib 50] [--db cz_bench_uploads]

A measurement to read, not a test: it prints, per server, path and framing, the server process's
resident memory before the upload and its peak during it (the kernel's high-water mark, VmHWM,
reset just before the upload by writing 5 to /proc/PID/clear_refs), and the growth between them.
Each upload has a fresh server, warmed first by small uploads to both paths (imports, connection
pools), so the growth is the body's, not the first request's. The simulator and the client are other processes.

Needs PostgreSQL on 127.0.0.1 (it drops and creates the database it is given, and only that one).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import httpx

from bench import procs

MIB = 1024 * 1024
PATHS = ("/api/files", "/v1/files/upload")
BOUNDARY = "b0undary-upload-memory-bench"


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def text_file(directory: str, mib: int) -> Path:
    """`mib` MiB of plain text (the upload type check reads its first bytes)."""
    path = Path(directory) / "upload.txt"
    line = b"a line of plain text for the upload memory benchmark, 64 bytes.\n"
    with path.open("wb") as out:
        for _ in range(mib * MIB // len(line)):
            out.write(line)
    return path


def multipart_chunks(path: Path):
    """The multipart body of `path` as the field `file`, 64 KiB at a time (sent chunked)."""
    yield (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    with path.open("rb") as source:
        while chunk := source.read(64 * 1024):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(base_url: str, key: str, path_on_server: str, file: Path, *, chunked: bool) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        if chunked:
            headers["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
            response = client.post(path_on_server, content=multipart_chunks(file), headers=headers)
        else:
            with file.open("rb") as source:
                files = {"file": (file.name, source, "text/plain")}
                response = client.post(path_on_server, files=files, headers=headers)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"{path_on_server}: {response.status_code} {response.text[:300]}")
    return response.status_code


def measure(kind: str, db: str, key: str, sim_url: str, big: Path, small: Path) -> list[tuple]:
    """One fresh server per upload: memory a process has grown to stays with it, and would hide
    the next upload's growth."""
    env = procs.gateway_env(db, sim_url=sim_url, CHAT_MAX_UPLOAD_BYTES=str(64 * MIB))
    rows = []
    for path_on_server in PATHS:
        for chunked in (False, True):
            server = procs.Server(kind=kind, app="cozeproject.asgi:application", env=env).start()
            try:
                base_url = f"http://127.0.0.1:{server.port}"
                pid = server.process().pid
                for warm_up in PATHS:
                    upload(base_url, key, warm_up, small, chunked=False)
                    upload(base_url, key, warm_up, small, chunked=True)
                before = status_kib(pid, "VmRSS")
                reset_peak(pid)
                upload(base_url, key, path_on_server, big, chunked=chunked)
                peak = status_kib(pid, "VmHWM")
            finally:
                server.stop()
            rows.append((kind, path_on_server, "chunked" if chunked else "Content-Length", before, peak))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=50, help="the upload's size in MiB")
    parser.add_argument("--db", default="cz_bench_uploads", help="database to (re)create for the run")
    parser.add_argument("--servers", default="daphne,uvicorn")
    args = parser.parse_args()

    procs.recreate_database(args.db)
    key = procs.create_api_key(args.db)
    simulator = subprocess.Popen(
        [procs.PYTHON, "-m", "chat.simulator", "--port", str(port := procs.free_port()), "--token", procs.SIM_TOKEN],
        cwd=procs.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = []
    try:
        procs.wait_for_port(port, simulator)
        with tempfile.TemporaryDirectory() as directory:
            big = text_file(directory, args.mib)
            small = Path(directory) / "small.txt"
            small.write_bytes(b"small\n" * 100)
            for kind in args.servers.split(","):
                rows += measure(kind, args.db, key, f"http://127.0.0.1:{port}", big, small)
    finally:
        procs.stop(simulator)
    print(f"{args.mib} MiB upload, server process RSS (MiB):")
    print(f"{'server':8} {'path':18} {'framing':15} {'before':>8} {'peak':>8} {'growth':>8}")
    for kind, path_on_server, framing, before, peak in rows:
        print(
            f"{kind:8} {path_on_server:18} {framing:15} {before / 1024:8.1f} {peak / 1024:8.1f} "
            f"{(peak - before) / 1024:8.1f}"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
