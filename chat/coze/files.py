"""Files uploaded to Coze (`/v1/files/upload`)."""

from dataclasses import dataclass

from chat.coze.client import aget_client, last_header
from chat.coze.errors import map_exception


@dataclass(frozen=True, slots=True)
class UploadedFile:
    file_id: str
    file_name: str
    bytes: int


async def aupload_file(*, file, file_name: str, content_type: str) -> UploadedFile:
    """Upload a file to Coze (`/v1/files/upload`) and return Coze's record of it.

    `file` is a binary file object (Django's uploaded file, on disk when large): httpx reads
    and sends it in 64 KiB chunks, so it is never held in memory whole. Raises ChatError when
    Coze refuses it or can't be reached, mapped as for chats.
    """
    try:
        uploaded = await (await aget_client()).files.upload(file=(file_name, file, content_type))
    except Exception as exc:
        raise map_exception(exc, logid=last_header("x-tt-logid"), mid_stream=False) from exc
    return UploadedFile(file_id=uploaded.id, file_name=uploaded.file_name or file_name, bytes=uploaded.bytes or 0)
