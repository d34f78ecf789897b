"""File routes: upload and retrieve."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import time

from .state import COZE_UPLOAD_EXTENSIONS, SimulatorBase, UploadedFile
from .wire import CozeError, Request, Response, ok


class FileRoutes(SimulatorBase):
    """``/v1/files/upload`` and ``/v1/files/retrieve``."""

    async def _file_upload(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise CozeError(4000, "the body must be multipart/form-data with a file field")
        part = _multipart_file(content_type, request.body, "file")
        if part is None:
            raise CozeError(4000, "the file field is missing")
        file_name, part_type, content = part
        if len(content) > self.config.max_upload_bytes:
            raise CozeError(4000, f"the file exceeds the size limit of {self.config.max_upload_bytes} bytes")
        if not content:
            raise CozeError(4000, "the file is empty")
        extension = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
        if extension not in COZE_UPLOAD_EXTENSIONS:
            raise CozeError(4000, f"unsupported file type: {file_name!r}")
        uploaded = UploadedFile(
            id=self.new_id(),
            file_name=file_name,
            bytes=len(content),
            content_type=part_type,
            sha256=hashlib.sha256(content).hexdigest(),
            created_at=int(time.time()),
        )
        self.state.files[uploaded.id] = uploaded
        return ok(uploaded.as_dict())

    async def _file_retrieve(self, request: Request) -> Response:
        uploaded = self.state.files.get(request.query.get("file_id", ""))
        if uploaded is None:
            raise CozeError(4000, "the file does not exist")
        return ok(uploaded.as_dict())


def _multipart_file(content_type: str, body: bytes, field_name: str) -> tuple[str, str, bytes] | None:
    """(file name, part content type, content) of the multipart field ``field_name``, or None."""
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field_name:
            file_name = part.get_filename() or ""
            return file_name, part.get_content_type(), part.get_payload(decode=True) or b""
    return None
