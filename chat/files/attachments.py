"""Attachments of a turn (docs/api.md §12) and the files' deletion rule.

`attachments_resolve` turns the `attachments` of a chat body into what the turn needs — the Coze
item of each and the copy stored on the user's message — and refuses another owner's file as not
found. `files_delete_for_sessions` is the deletion rule: a session's files go with it.
"""

from dataclasses import dataclass

from django.db.models import QuerySet

from chat.domain.errors import ChatError
from chat.domain.inputs import Owner
from chat.files.uploads import attachment_kind
from sessions_admin.models import ChatFile, Message


@dataclass(frozen=True, slots=True)
class ResolvedAttachments:
    """The attachments of one turn: Coze items (see `coze.attachment_item`), the copies stored on
    the user's message, and the owner's files to link to that message."""

    items: tuple[dict, ...] = ()
    records: tuple[dict, ...] = ()
    files: tuple[ChatFile, ...] = ()


def attachments_resolve(*, owner: Owner, attachments: list[dict]) -> ResolvedAttachments:
    """Resolve validated attachments for a turn (sync: runs inside `turn_start`'s transaction).

    Raises ChatError("not_found") for a `file_id` that is unknown or not the owner's (for an
    end-user token: not uploaded with a token of the same end user).
    """
    file_ids = [item["file_id"] for item in attachments if "file_id" in item]
    files = {f.coze_file_id: f for f in ChatFile.objects.filter(**owner.scope(), coze_file_id__in=file_ids)}
    items, records = [], []
    for attachment in attachments:
        if "file_id" in attachment:
            chat_file = files.get(attachment["file_id"])
            if chat_file is None:
                raise ChatError("not_found", f"No such file: {attachment['file_id']}.")
            items.append({"kind": attachment_kind(chat_file.content_type), "file_id": chat_file.coze_file_id})
            records.append(chat_file.as_attachment())
        else:
            items.append({"kind": attachment["type"], "url": attachment["url"]})
            records.append({"url": attachment["url"], "type": attachment["type"]})
    return ResolvedAttachments(items=tuple(items), records=tuple(records), files=tuple(files.values()))


def attachments_link(*, message: Message, resolved: ResolvedAttachments) -> None:
    """Link the owner's files to the message that attached them (for deletion with the session)."""
    if resolved.files:
        message.files.add(*resolved.files)


# --- deletion ---------------------------------------------------------------------------------


def files_of_sessions(session_pks) -> QuerySet[ChatFile]:
    """The files attached by messages of these sessions."""
    linked = ChatFile.messages.through.objects.filter(message__conversation__session__in=session_pks)
    return ChatFile.objects.filter(pk__in=linked.values("chatfile_id"))


def files_delete_for_sessions(session_pks) -> int:
    """Delete the file records used by these sessions' messages; returns how many. Call it before
    the messages go (the link is through them)."""
    _, by_label = files_of_sessions(session_pks).delete()
    return by_label.get(ChatFile._meta.label, 0)
