"""Upload bodies are streamed, not held in memory (docs/api.md §12), measured on the real servers:
a 50 MiB upload grows the resident memory of a daphne or uvicorn worker by at most 10 MiB, sent
with a Content-Length or chunked, to the gateway's and to Coze's upload path. And the pieces that
make daphne stream: its input queue keeps a large body on disk and gives it back in order."""

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from cozeproject.daphne_bodies import IN_MEMORY_BYTES, SpooledBodyQueue
from sessions_admin.models import ApiClient, ChatFile
from tests.conftest import auth
from tests.test_workers import start_worker  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024
UPLOAD_MIB = 50
GROWTH_LIMIT_MIB = 10
BOUNDARY = "upload-memory-test"
LINE = b"a line of plain text for the upload memory test, 64 bytes long.\n"


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def text_chunks(mib: int):
    """The multipart body of a `mib` MiB text file, 64 KiB of text at a time."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    block = LINE * 1024
    for _ in range(mib * MIB // len(block)):
        yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def post_upload(url: str, key: str, path: str, mib: float, *, chunked: bool) -> httpx.Response:
    headers = {**auth(key), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    size = sum(len(chunk) for chunk in text_chunks(int(mib)))
    if not chunked:
        headers["Content-Length"] = str(size)
    with httpx.Client(timeout=120) as client:
        return client.post(url + path, content=text_chunks(int(mib)), headers=headers)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to read a peak RSS")
@pytest.mark.parametrize(
    "server, path, chunked",
    [
        ("daphne", "/api/files", False),
        ("daphne", "/api/files", True),
        ("daphne", "/v1/files/upload", False),
        ("uvicorn", "/api/files", False),
        ("uvicorn", "/api/files", True),
        ("uvicorn", "/v1/files/upload", True),
    ],
)
def test_a_50_mib_upload_grows_a_worker_by_at_most_10_mib(start_worker, server, path, chunked):  # noqa: F811
    _, key = ApiClient.create_with_key(name="uploader")
    worker = start_worker(f"{server}-uploads", server, CHAT_MAX_UPLOAD_BYTES=str(64 * MIB))
    pid = worker.process.pid
    for warm_up in ("/api/files", "/v1/files/upload"):  # imports and pools, not the body, are not the point
        assert post_upload(worker.url, key, warm_up, 1, chunked=False).status_code in (200, 201)
        assert post_upload(worker.url, key, warm_up, 1, chunked=True).status_code in (200, 201)
    before = status_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now

    response = post_upload(worker.url, key, path, UPLOAD_MIB, chunked=chunked)

    growth_mib = (status_kib(pid, "VmHWM") - before) / 1024
    assert response.status_code in (200, 201), response.text
    assert ChatFile.objects.filter(bytes__gt=UPLOAD_MIB * MIB - MIB).count() == 1
    assert growth_mib <= GROWTH_LIMIT_MIB, f"{server} {path} grew by {growth_mib:.1f} MiB"


def test_daphnes_input_queue_keeps_a_large_body_on_disk_in_order():
    async def scenario():
        queue = asyncio.Queue()
        queue.__class__ = SpooledBodyQueue  # as `daphne_bodies` turns daphne's own queue
        queue._start_spooling()
        chunks = [bytes([index % 251]) * 8192 for index in range(600)]  # ~4.7 MiB
        for index, chunk in enumerate(chunks):
            queue.put_nowait({"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1})
        queue.put_nowait({"type": "http.disconnect"})
        in_memory = sum(len(m["body"]) for m in queue._queue if isinstance(m.get("body"), bytes))
        received = [await queue.get() for _ in range(len(chunks) + 1)]
        return in_memory, received, queue

    in_memory, received, queue = asyncio.run(scenario())
    assert in_memory <= IN_MEMORY_BYTES  # the rest waited in the spool file
    body = b"".join(message["body"] for message in received[:-1])
    expected = b"".join(bytes([index % 251]) * 8192 for index in range(600))
    assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
    assert [m["more_body"] for m in received[:-1]] == [True] * 599 + [False]
    assert received[-1] == {"type": "http.disconnect"}
    assert queue._spool.closed  # given back once the body was read


def test_daphnes_input_queue_gives_chunks_back_in_order_when_reads_and_writes_interleave():
    async def scenario():
        queue = asyncio.Queue()
        queue.__class__ = SpooledBodyQueue
        queue._start_spooling()
        first = b"m" * IN_MEMORY_BYTES  # fills what stays in memory
        queue.put_nowait({"type": "http.request", "body": first, "more_body": True})
        got = [await queue.get()]
        for index in range(5):
            queue.put_nowait({"type": "http.request", "body": bytes([65 + index]) * 1000, "more_body": index < 4})
            got.append(await queue.get())
        return got

    got = asyncio.run(scenario())
    assert got[0]["body"] == b"m" * IN_MEMORY_BYTES
    assert [message["body"] for message in got[1:]] == [bytes([65 + index]) * 1000 for index in range(5)]
