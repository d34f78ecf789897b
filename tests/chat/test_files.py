"""Files and images (docs/api.md §12): uploads through cozepy to the simulator, their limits, and
attachments reaching Coze as one object_string message — asserted at the simulator."""

import asyncio
import base64
import hashlib
import io
import json
import struct
import zipfile
import zlib

import httpx
import pytest
from django.core.management import call_command

from sessions_admin.models import ChatFile, ChatSession, Message
from tests.conftest import auth, read_sse

pytestmark = pytest.mark.django_db(transaction=True)


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    """A real (tiny, grey) PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def upload(http: httpx.Client, key: str, name: str, content: bytes, content_type: str) -> httpx.Response:
    return http.post("/api/files", files={"file": (name, content, content_type)}, headers=auth(key))


def sim_get(simulator, path: str) -> dict:
    return httpx.get(f"{simulator.base_url}{path}").json()


def sim_upload_count(simulator) -> int:
    return len(simulator.app.state.files)


def sent_items(simulator, chat_id: str) -> list[dict]:
    """The object_string items of the user message the simulator received for this chat."""
    messages = sim_get(simulator, f"/_sim/chats/{chat_id}")["additional_messages"]
    assert len(messages) == 1
    assert messages[0]["role"] == "user"
    assert messages[0]["content_type"] == "object_string"
    return [
        {key: value for key, value in item.items() if value is not None} for item in json.loads(messages[0]["content"])
    ]


# --- upload -----------------------------------------------------------------------------------


def test_an_uploaded_image_reaches_coze_whole_and_is_recorded_for_its_owner(http, api_key, simulator):
    image = png_bytes(64, 64)
    response = upload(http, api_key, "cat.png", image, "image/png")

    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        "file_id": body["file_id"],
        "file_name": "cat.png",
        "bytes": len(image),
        "content_type": "image/png",
    }
    at_coze = sim_get(simulator, f"/_sim/files/{body['file_id']}")
    assert at_coze == {
        "file_name": "cat.png",
        "bytes": len(image),
        "content_type": "image/png",
        "sha256": hashlib.sha256(image).hexdigest(),
    }
    record = ChatFile.objects.get(coze_file_id=body["file_id"])
    assert record.owner_key.startswith("client:")
    assert record.api_client_id is not None
    assert (record.file_name, record.bytes, record.content_type) == ("cat.png", len(image), "image/png")


def test_a_large_upload_is_streamed_through_to_coze_intact(http, api_key, simulator, settings):
    # Over the 1 MiB body limit of the other endpoints and over Django's in-memory upload size,
    # so it goes through the upload path's own limit and a temporary file.
    content = b"line of text\n" * (300 * 1024)
    response = upload(http, api_key, "notes.txt", content, "text/plain")

    assert response.status_code == 201, response.text
    at_coze = sim_get(simulator, f"/_sim/files/{response.json()['file_id']}")
    assert at_coze["bytes"] == len(content)
    assert at_coze["sha256"] == hashlib.sha256(content).hexdigest()


def test_a_file_over_the_upload_limit_is_413_and_never_reaches_coze(http, api_key, simulator, settings):
    settings.CHAT_MAX_UPLOAD_BYTES = 1000
    before = sim_upload_count(simulator)

    just_over = upload(http, api_key, "a.txt", b"x" * 1001, "text/plain")
    far_over = upload(http, api_key, "b.txt", b"x" * 200_000, "text/plain")  # refused by the body limit

    for response in (just_over, far_over):
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"
    assert sim_upload_count(simulator) == before
    assert upload(http, api_key, "c.txt", b"x" * 1000, "text/plain").status_code == 201


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [
        ("tool.exe", b"MZ\x90\x00" + b"\x00" * 100, "application/x-msdownload"),  # a type not allowed
        ("cat.png", b"just some text, not an image", "image/png"),  # declared image, content text
        ("report.pdf", png_bytes(), "application/pdf"),  # declared PDF, content PNG
        ("notes.txt", b"text\x00with\x00nul bytes", "text/plain"),  # declared text, content binary
        ("notes.txt", png_bytes(), "text/plain"),  # declared text, content an image
        ("page.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),  # not in the defaults
    ],
)
def test_a_file_of_a_type_outside_the_list_or_not_what_it_claims_is_415(
    http, api_key, simulator, name, content, content_type
):
    before = sim_upload_count(simulator)
    response = upload(http, api_key, name, content, content_type)

    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert sim_upload_count(simulator) == before


def office_document(part: str) -> bytes:
    """An Office Open XML file's container: a zip whose parts name the kind of document."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("[Content_Types].xml", "_rels/.rels", part):
            archive.writestr(name, "<x/>")
    return buffer.getvalue()


OLE_DOCUMENT = bytes.fromhex("D0CF11E0A1B11AE1") + bytes(1024)  # the legacy Office container


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [
        (
            "letter.docx",
            office_document("word/document.xml"),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (
            "sheet.xlsx",
            office_document("xl/workbook.xml"),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ),
        (
            "slides.pptx",
            office_document("ppt/presentation.xml"),
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ),
        ("letter.doc", OLE_DOCUMENT, "application/msword"),
        ("sheet.xls", OLE_DOCUMENT, "application/vnd.ms-excel"),
        ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64), "image/jpeg"),
        ("notes.md", "# Notizen über Dateien ✓\n".encode(), "text/markdown"),
        ("report.pdf", PDF, "application/pdf"),
    ],
)
def test_images_pdf_text_and_office_documents_are_accepted(http, api_key, name, content, content_type):
    response = upload(http, api_key, name, content, content_type)

    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == content_type


def test_office_types_are_checked_against_their_container(http, api_key):
    docx_type = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

    assert upload(http, api_key, "letter.docx", PDF, docx_type).status_code == 415
    assert (
        upload(http, api_key, "letter.doc", office_document("word/document.xml"), "application/msword").status_code
        == 415
    )


def test_a_generic_declared_type_is_taken_from_the_file_name_and_checked(http, api_key):
    response = upload(http, api_key, "report.pdf", PDF, "application/octet-stream")

    assert response.status_code == 201
    assert response.json()["content_type"] == "application/pdf"


def test_upload_types_are_configurable(http, api_key, settings):
    settings.CHAT_UPLOAD_TYPES = ["image/*"]

    assert upload(http, api_key, "cat.png", png_bytes(), "image/png").status_code == 201
    assert upload(http, api_key, "report.pdf", PDF, "application/pdf").status_code == 415


def test_upload_needs_an_api_key_and_a_file_field(http, api_key):
    anonymous = http.post("/api/files", files={"file": ("cat.png", png_bytes(), "image/png")})
    no_file = http.post("/api/files", files={"other": ("cat.png", png_bytes(), "image/png")}, headers=auth(api_key))
    empty = upload(http, api_key, "empty.txt", b"", "text/plain")

    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    assert no_file.status_code == 400
    assert no_file.json()["code"] == "invalid"
    assert empty.status_code == 400


def test_coze_refusing_the_upload_is_mapped_like_chat_errors(http, api_key, settings):
    settings.COZE_API_TOKEN = "pat_wrong_token"

    response = upload(http, api_key, "cat.png", png_bytes(), "image/png")

    assert response.status_code == 502
    assert response.json()["code"] == "upstream_auth_failed"
    assert "pat_wrong_token" not in response.text
    assert not ChatFile.objects.exists()


# --- attachments ------------------------------------------------------------------------------


def test_a_chat_with_an_image_reaches_coze_as_one_object_string_message(http, api_key, simulator):
    file_id = upload(http, api_key, "cat.png", png_bytes(), "image/png").json()["file_id"]

    response = http.post(
        "/api/chat",
        json={"message": "What is in this picture?", "attachments": [{"file_id": file_id}]},
        headers=auth(api_key),
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == "You said: What is in this picture? [received: image cat.png]"
    assert sent_items(simulator, body["chat_id"]) == [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "file_id": file_id},
    ]


def test_a_streamed_chat_with_a_pdf_and_a_link_reaches_coze_as_file_items(http, api_key, simulator):
    file_id = upload(http, api_key, "report.pdf", PDF, "application/pdf").json()["file_id"]
    link = "https://example.com/chart.png"

    response = http.post(
        "/api/chat/stream",
        json={
            "message": "Summarise these",
            "attachments": [{"file_id": file_id}, {"url": link, "type": "image"}],
        },
        headers=auth(api_key),
    )

    events = read_sse(response)
    completed = next(event["data"] for event in events if event.get("event") == "completed")
    chat_id = events[0]["data"]["chat_id"]
    assert completed["content"] == f"You said: Summarise these [received: file report.pdf, image {link}]"
    assert sent_items(simulator, chat_id) == [
        {"type": "text", "text": "Summarise these"},
        {"type": "file", "file_id": file_id},
        {"type": "image", "file_url": link},
    ]


def test_session_messages_carry_their_attachments(http, api_key):
    file_id = upload(http, api_key, "report.pdf", PDF, "application/pdf").json()["file_id"]
    http.post(
        "/api/chat",
        json={
            "message": "Read this",
            "session_id": "with-files",
            "attachments": [{"file_id": file_id}, {"url": "https://example.com/a.png", "type": "image"}],
        },
        headers=auth(api_key),
    )

    messages = http.get("/api/sessions/with-files/messages", headers=auth(api_key)).json()["results"]

    question, answer = messages[0], messages[1]
    assert question["content"] == "Read this"
    assert question["content_type"] == "object_string"
    assert question["attachments"] == [
        {"file_id": file_id, "file_name": "report.pdf", "content_type": "application/pdf", "bytes": len(PDF)},
        {"url": "https://example.com/a.png", "type": "image"},
    ]
    assert answer["attachments"] == []


def test_another_owners_file_is_not_found_and_nothing_is_sent_or_stored(http, api_key, other_api_key, simulator):
    file_id = upload(http, api_key, "cat.png", png_bytes(), "image/png").json()["file_id"]
    chats_before = len(simulator.app.state.chats)

    response = http.post(
        "/api/chat",
        json={"message": "whose?", "session_id": "probe", "attachments": [{"file_id": file_id}]},
        headers=auth(other_api_key),
    )
    unknown = http.post("/api/chat", json={"message": "x", "attachments": [{"file_id": "123"}]}, headers=auth(api_key))

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert unknown.status_code == 404
    streamed = http.post(
        "/api/chat/stream", json={"message": "x", "attachments": [{"file_id": file_id}]}, headers=auth(other_api_key)
    )
    assert streamed.status_code == 404
    assert streamed.json()["code"] == "not_found"
    assert len(simulator.app.state.chats) == chats_before
    assert not ChatSession.objects.filter(session_id="probe").exists()


@pytest.mark.parametrize(
    "attachments",
    [
        [{"file_id": "1", "url": "https://example.com/a.png"}],
        [{"url": "https://example.com/a.png"}],
        [{"url": "http://example.com/a.png", "type": "image"}],
        [{"url": "https://example.com/a.png", "type": "video"}],
        [{"name": "x"}],
        [],
        "file",
    ],
)
def test_malformed_attachments_are_invalid(http, api_key, attachments):
    response = http.post("/api/chat", json={"message": "hi", "attachments": attachments}, headers=auth(api_key))

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "attachments" in response.json()["errors"]


def test_attachments_work_over_the_websocket_too(asgi_server, api_key, simulator):
    import asyncio

    import websockets

    async def run() -> list[dict]:
        async with websockets.connect(f"{asgi_server.ws_url}/ws/chat/", additional_headers=auth(api_key)) as socket:
            await socket.send(
                json.dumps(
                    {
                        "type": "chat",
                        "message": "look",
                        "attachments": [{"url": "https://example.com/doc.pdf", "type": "file"}],
                    }
                )
            )
            frames = []
            while not frames or frames[-1]["type"] != "done":
                frames.append(json.loads(await socket.recv()))
            return frames

    frames = asyncio.run(run())
    completed = next(frame for frame in frames if frame["type"] == "completed")
    assert completed["content"] == "You said: look [received: file https://example.com/doc.pdf]"
    assert sent_items(simulator, frames[0]["chat_id"])[1] == {"type": "file", "file_url": "https://example.com/doc.pdf"}


# --- deletion ---------------------------------------------------------------------------------


def chat_with_file(http, key: str, session_id: str, name: str) -> str:
    file_id = upload(http, key, name, PDF, "application/pdf").json()["file_id"]
    response = http.post(
        "/api/chat",
        json={"message": "see file", "session_id": session_id, "attachments": [{"file_id": file_id}]},
        headers=auth(key),
    )
    assert response.status_code == 200, response.text
    return file_id


def test_deleting_a_session_deletes_the_files_its_messages_used(http, api_key):
    used = chat_with_file(http, api_key, "doomed", "used.pdf")
    kept = chat_with_file(http, api_key, "kept", "kept.pdf")
    unattached = upload(http, api_key, "spare.pdf", PDF, "application/pdf").json()["file_id"]

    assert http.delete("/api/sessions/doomed", headers=auth(api_key)).status_code == 204

    remaining = set(ChatFile.objects.values_list("coze_file_id", flat=True))
    assert remaining == {kept, unattached}
    assert used not in remaining
    assert not Message.objects.filter(conversation__session__session_id="doomed").exists()


def test_clear_chat_sessions_deletes_the_files_with_their_sessions(http, api_key, capsys):
    used = chat_with_file(http, api_key, "old", "used.pdf")
    kept = chat_with_file(http, api_key, "young", "kept.pdf")

    call_command("clear_chat_sessions", "--session-id", "old", "--noinput")

    output = capsys.readouterr().out
    assert (
        output.strip()
        .splitlines()[-1]
        .startswith("Deleted 1 session, 1 conversation, 4 messages, 1 reply, 1 file; at Coze: 1 conversation")
    )
    assert list(ChatFile.objects.values_list("coze_file_id", flat=True)) == [kept]
    assert used != kept


def test_a_file_coze_refuses_is_an_upstream_error_and_not_recorded(http, api_key):
    # Our type check passes text/plain; Coze refuses the .log extension.
    response = upload(http, api_key, "server.log", b"plain text lines\n", "text/plain")

    assert response.status_code == 502
    assert response.json()["code"] == "upstream_error"
    assert "unsupported file type" in response.json()["detail"]
    assert not ChatFile.objects.exists()


def test_uploads_count_against_the_owners_rate_limit(http, api_key, simulator, settings):
    settings.CHAT_RATE_LIMIT_PER_MINUTE = 1
    before = sim_upload_count(simulator)

    # Three requests span at most two one-minute windows, so with one a minute at least one is refused.
    statuses = [upload(http, api_key, f"{n}.txt", b"text", "text/plain").status_code for n in range(3)]

    assert 429 in statuses
    assert set(statuses) <= {201, 429}
    assert sim_upload_count(simulator) == before + statuses.count(201)


def test_a_refused_type_is_explained_in_words(http, api_key):
    response = upload(http, api_key, "tool.exe", b"MZ\x90\x00", "application/x-msdownload")

    assert response.json()["detail"] == (
        "Files of type 'application/x-msdownload' are not accepted; send images, PDF, text or Office documents."
    )


# --- the upload path's own pieces ---------------------------------------------------------------


def test_a_chunked_upload_is_held_to_the_upload_limit_too(http, api_key, simulator, settings):
    settings.CHAT_MAX_UPLOAD_BYTES = 1000
    boundary = "b0undary"

    def body(size: int):
        # A generator body: httpx sends it chunked, without Content-Length.
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        for _ in range(size // 1000):
            yield b"x" * 1000
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**auth(api_key), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    before = sim_upload_count(simulator)

    far_over = http.post("/api/files", content=body(200_000), headers=headers)
    within = http.post("/api/files", content=body(1000), headers=headers)

    assert far_over.status_code == 413
    assert far_over.json() == {
        "detail": "The file is larger than the upload limit of 1,000 bytes.",
        "code": "payload_too_large",
    }
    assert within.status_code == 201, within.text
    assert sim_upload_count(simulator) == before + 1


def test_other_endpoints_keep_the_one_mebibyte_body_limit(http, api_key):
    response = http.post("/api/chat", content=b"{" + b" " * (1024 * 1024) + b"}", headers=auth(api_key))

    assert response.status_code == 413
    assert response.json()["detail"] == "The request body is larger than 1 MiB."


def test_a_body_that_is_not_multipart_is_refused_with_a_useful_message(http, api_key):
    as_json = http.post("/api/files", json={"file": "cat.png"}, headers=auth(api_key))
    broken = http.post(
        "/api/files",
        content=b"--x\r\nnot a part",
        headers={**auth(api_key), "Content-Type": "multipart/form-data"},  # no boundary
    )

    assert as_json.status_code == 415
    assert as_json.json()["detail"] == "Send the file as multipart/form-data, field 'file'."
    assert broken.status_code == 400
    assert broken.json()["code"] == "invalid"


@pytest.mark.asyncio
async def test_the_adapter_streams_the_file_to_coze_in_chunks(simulator, settings):
    from chat import coze

    class ReadRecorder(io.BytesIO):
        reads: list[int] = []

        def read(self, size=-1):
            self.reads.append(size)
            return super().read(size)

    content = bytes(range(256)) * 4096 * 3  # 3 MiB
    file = ReadRecorder(content)

    uploaded = await coze.aupload_file(file=file, file_name="blob.pdf", content_type="application/pdf")

    assert uploaded.bytes == len(content)
    assert file.reads and all(0 < size <= 64 * 1024 for size in file.reads)  # never read(-1): never whole
    at_coze = await asyncio.to_thread(sim_get, simulator, f"/_sim/files/{uploaded.file_id}")
    assert at_coze["sha256"] == hashlib.sha256(content).hexdigest()
    assert at_coze["content_type"] == "application/pdf"


@pytest.mark.asyncio
async def test_openai_style_image_urls_become_attachments(simulator, api_key):
    from chat.access.auth import aowner_from_api_key
    from chat.domain.errors import ChatError
    from chat.files import uploads
    from chat.runtime.db import db_async

    owner = await aowner_from_api_key(api_key)
    image = png_bytes()
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()

    link = uploads.attachment_from_image_url("https://example.com/a.png")
    pending = uploads.attachment_from_image_url(data_url)  # checked, not yet sent
    (uploaded,) = await uploads.aupload_pending(owner=owner, attachments=(pending,))

    assert link == {"url": "https://example.com/a.png", "type": "image"}
    assert uploads.has_pending_uploads([pending]) and not uploads.has_pending_uploads([link, uploaded])
    at_coze = await asyncio.to_thread(sim_get, simulator, f"/_sim/files/{uploaded['file_id']}")
    assert at_coze["file_name"] == "image.png"
    assert at_coze["sha256"] == hashlib.sha256(image).hexdigest()
    # Through the service's database threads (closed at the end of the run), not asgiref's.
    record = await db_async(ChatFile.objects.get)(coze_file_id=uploaded["file_id"])
    assert record.owner_key == owner.key
    for bad in ("http://example.com/a.png", "data:image/png;base64,@@@", "ftp://x"):
        with pytest.raises(ChatError) as raised:
            uploads.attachment_from_image_url(bad)
        assert raised.value.code == "invalid"
    with pytest.raises(ChatError) as raised:
        uploads.attachment_from_image_url("data:image/png;base64," + base64.b64encode(b"%PDF-1.4").decode())
    assert raised.value.code == "unsupported_media_type"


def test_bad_upload_settings_stop_the_server_at_start_up():
    from tests.chat.test_resilience import run_settings

    bad_type = run_settings({"DJANGO_DEBUG": "1", "CHAT_UPLOAD_TYPES": "image/png,pdf"})
    bad_size = run_settings({"DJANGO_DEBUG": "1", "CHAT_MAX_UPLOAD_BYTES": "20MB"})
    fine = run_settings({"DJANGO_DEBUG": "1", "CHAT_UPLOAD_TYPES": "image/*, application/PDF"})

    assert bad_type.returncode != 0 and "CHAT_UPLOAD_TYPES" in bad_type.stderr and "'pdf'" in bad_type.stderr
    assert bad_size.returncode != 0 and "CHAT_MAX_UPLOAD_BYTES" in bad_size.stderr
    assert fine.returncode == 0, fine.stderr
