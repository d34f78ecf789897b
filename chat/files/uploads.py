"""Uploads (docs/api.md §12): `afile_upload` checks an uploaded file against the size and type
limits, sends it to Coze through the adapter and records it for its owner; an OpenAI `image_url`
part becomes an attachment the same way."""

import base64
import binascii
import io
import mimetypes
from dataclasses import dataclass
from fnmatch import fnmatchcase

import filetype
from django.conf import settings

from chat import coze
from chat.domain.errors import ChatError
from chat.domain.inputs import check_text
from chat.runtime.db import db_async
from sessions_admin.models import ChatFile

SNIFF_BYTES = 8192
TEXT_TYPES_PREFIX = "text/"
# Content types that share one signature: what the first bytes can show, for each declared type.
ZIP_OFFICE_TYPES = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
OLE_OFFICE_TYPES = {"application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"}
# The legacy Office formats share one container (OLE2); what is inside is told apart only by
# heuristics that miss files written by other tools, so the container's signature is the check.
OLE_SIGNATURE = bytes.fromhex("D0CF11E0A1B11AE1")
SAME_SIGNATURE = {
    **{office: {*ZIP_OFFICE_TYPES, "application/zip"} for office in ZIP_OFFICE_TYPES},
    "image/png": {"image/png", "image/apng"},
}
GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


# --- checks -----------------------------------------------------------------------------------


def upload_too_large_detail() -> str:
    """The 413 detail for uploads (also used by the body-size middleware)."""
    limit = settings.CHAT_MAX_UPLOAD_BYTES
    size = f"{limit / (1024 * 1024):g} MiB" if limit >= 1024 * 1024 else f"{limit:,} bytes"
    return f"The file is larger than the upload limit of {size}."


def upload_type_allowed(content_type: str) -> bool:
    return any(fnmatchcase(content_type, pattern.lower()) for pattern in settings.CHAT_UPLOAD_TYPES)


def allowed_types_summary() -> str:
    """CHAT_UPLOAD_TYPES in words: "images, PDF, text or Office documents"."""
    words: list[str] = []
    for pattern in settings.CHAT_UPLOAD_TYPES:
        pattern = pattern.lower()
        if pattern.startswith("image/"):
            word = "images"
        elif pattern == "application/pdf":
            word = "PDF"
        elif pattern.startswith("text/"):
            word = "text"
        elif pattern in ZIP_OFFICE_TYPES or pattern in OLE_OFFICE_TYPES:
            word = "Office documents"
        else:
            word = pattern
        if word not in words:
            words.append(word)
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)


def sniffed_type(head: bytes) -> str | None:
    """The type the first bytes show (None when they show none, as for text)."""
    kind = filetype.guess(head)
    return kind.mime if kind else None


def looks_like_text(head: bytes) -> bool:
    """UTF-8 (or ASCII) without NUL bytes; a character cut at the end of `head` is allowed."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3 and error.reason == "unexpected end of data"
    return True


def upload_content_type(*, declared: str, file_name: str, head: bytes) -> str:
    """The file's content type once it passes the type check; ChatError("unsupported_media_type")
    otherwise.

    The declared type (the part's Content-Type, or the name's when generic) must be one of
    CHAT_UPLOAD_TYPES, and the first bytes must agree with it: a PDF starts like a PDF, an
    image like that image, text is text.
    """
    content_type = declared.split(";")[0].strip().lower()
    if content_type in GENERIC_TYPES:
        content_type = (mimetypes.guess_type(file_name)[0] or "").lower()
    if not content_type or not upload_type_allowed(content_type):
        raise ChatError(
            "unsupported_media_type",
            f"Files of type {content_type or 'unknown'!r} are not accepted; send {allowed_types_summary()}.",
        )
    sniffed = sniffed_type(head)
    if content_type.startswith(TEXT_TYPES_PREFIX):
        matches = sniffed is None and looks_like_text(head)
    elif content_type in OLE_OFFICE_TYPES:
        matches = head.startswith(OLE_SIGNATURE)
    else:
        matches = sniffed is not None and sniffed in SAME_SIGNATURE.get(content_type, {content_type})
    if not matches:
        raise ChatError(
            "unsupported_media_type",
            f"The file's content is not {content_type}" + (f" (it looks like {sniffed})." if sniffed else "."),
        )
    return content_type


def attachment_kind(content_type: str) -> str:
    """How Coze is told about a file: `image` for images, `file` for everything else."""
    return "image" if content_type.startswith("image/") else "file"


# --- upload -----------------------------------------------------------------------------------


def _checked_upload(*, size: int, file_name: str, declared: str, head: bytes) -> str:
    """The checks every upload passes before it may go to Coze; returns its content type."""
    if size > settings.CHAT_MAX_UPLOAD_BYTES:
        raise ChatError("payload_too_large", upload_too_large_detail())
    if not size:
        raise ChatError("invalid", "The file is empty.", errors={"file": ["The file is empty."]})
    check_text(file_name, "file")
    return upload_content_type(declared=declared, file_name=file_name, head=head)


@db_async
def _file_record(*, owner, coze_file: coze.UploadedFile, file_name: str, size: int, content_type: str) -> ChatFile:
    chat_file, _ = ChatFile.objects.update_or_create(
        owner_key=owner.key,
        coze_file_id=coze_file.file_id,
        defaults={
            "api_client_id": owner.api_client_id,
            "user_id": owner.user_id,
            "coze_user_id": owner.end_user_id or "",
            "file_name": file_name,
            "bytes": size,
            "content_type": content_type,
        },
    )
    return chat_file


async def afile_upload(*, owner, uploaded_file) -> ChatFile:
    """Check `uploaded_file` (Django's UploadedFile), upload it to Coze, record it for `owner`.

    Raises ChatError: payload_too_large over CHAT_MAX_UPLOAD_BYTES, unsupported_media_type
    for a type outside CHAT_UPLOAD_TYPES or content that contradicts it, invalid when empty,
    upstream_* when Coze refuses or can't be reached. Nothing reaches Coze unless the checks pass.
    """
    file_name = (uploaded_file.name or "upload")[:255]
    uploaded_file.seek(0)
    head = uploaded_file.read(SNIFF_BYTES)
    uploaded_file.seek(0)
    content_type = _checked_upload(
        size=uploaded_file.size, file_name=file_name, declared=uploaded_file.content_type or "", head=head
    )
    coze_file = await coze.aupload_file(file=uploaded_file.file, file_name=file_name, content_type=content_type)
    return await _file_record(
        owner=owner, coze_file=coze_file, file_name=file_name, size=uploaded_file.size, content_type=content_type
    )


def file_upload_body(chat_file: ChatFile) -> dict:
    """The `201` body of `POST /api/files`."""
    return {
        "file_id": chat_file.coze_file_id,
        "file_name": chat_file.file_name,
        "bytes": chat_file.bytes,
        "content_type": chat_file.content_type,
    }


# The key of an attachment item still to be uploaded (a data: URL's image, checked already): the
# turn uploads it once admitted (`aupload_pending`), so a refused turn uploads nothing.
PENDING_UPLOAD = "pending_upload"


@dataclass(frozen=True, slots=True)
class PendingImage:
    file_name: str
    content: bytes
    content_type: str


def attachment_from_image_url(url: str) -> dict:
    """The chat body's attachment for an OpenAI `image_url` part: an `https://` link as it is; a
    `data:image/…;base64,…` URL decoded and checked now (the limits and checks of `POST
    /api/files`) and kept as a pending upload (`PENDING_UPLOAD`), which the turn sends to Coze
    only once admitted. Raises ChatError (invalid, 413, 415) before anything leaves the building.
    """
    if url[:8].lower() == "https://":
        return {"url": url, "type": "image"}
    header, comma, payload = url.partition(",")
    if not (header[:5].lower() == "data:" and header.lower().endswith(";base64") and comma):
        raise ChatError("invalid", "An image URL must be https:// or a base64 data: URL.")
    content_type = header[5:].rsplit(";", 1)[0].lower() or "application/octet-stream"
    try:
        content = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ChatError("invalid", "The data: URL is not valid base64.") from None
    extension = mimetypes.guess_extension(content_type) or ""
    extension = {".jpe": ".jpg", ".jpeg": ".jpg"}.get(extension, extension)
    file_name = f"image{extension}"
    checked_type = _checked_upload(
        size=len(content), file_name=file_name, declared=content_type, head=content[:SNIFF_BYTES]
    )
    return {PENDING_UPLOAD: PendingImage(file_name=file_name, content=content, content_type=checked_type)}


def has_pending_uploads(attachments) -> bool:
    return any(PENDING_UPLOAD in item for item in attachments)


async def aupload_pending(*, owner, attachments: tuple[dict, ...]) -> tuple[dict, ...]:
    """`attachments` with each pending upload sent to Coze for `owner` and attached by its file
    id. Raises ChatError (upstream_*) when Coze refuses one."""
    uploaded = []
    for item in attachments:
        pending = item.get(PENDING_UPLOAD)
        if pending is None:
            uploaded.append(item)
            continue
        coze_file = await coze.aupload_file(
            file=io.BytesIO(pending.content), file_name=pending.file_name, content_type=pending.content_type
        )
        chat_file = await _file_record(
            owner=owner,
            coze_file=coze_file,
            file_name=pending.file_name,
            size=len(pending.content),
            content_type=pending.content_type,
        )
        uploaded.append({"file_id": chat_file.coze_file_id})
    return tuple(uploaded)
