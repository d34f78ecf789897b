"""The Coze adapter: the only package that imports cozepy.

It owns the shared `AsyncCoze` client (one per event loop, i.e. one per worker process;
`chat.coze.client`), builds requests and translates cozepy's stream into our own `Upstream*`
events, continues chats paused for local tools (`chat.coze.chats`), creates conversations ahead of
their first chat and deletes them or their messages for retention (`chat.coze.conversations`),
uploads files (`chat.coze.files`), forwards ratings (`chat.coze.feedback`), and maps every cozepy or
transport
failure to a `ChatError` with a code from docs/api.md §3 (`chat.coze.errors`). Details never carry
the token. The rest of the project uses the names exported here.

In demo mode (no COZE_API_TOKEN) it starts the built-in Coze simulator in this process and talks
to it over HTTP exactly as it would talk to Coze.
"""

import warnings

from authlib.deprecate import AuthlibDeprecationWarning

# cozepy 0.20 imports authlib.jose, which warns on every start of every process (three lines of
# noise before each management command). Only that one warning: authlib's other deprecations and
# everyone else's still show. The filter must follow authlib's own "always" filter for its
# warnings (set when authlib.deprecate is imported, above) and precede every cozepy import (the
# modules below).
warnings.filterwarnings(
    "ignore", message=r"authlib\.jose module is deprecated", category=AuthlibDeprecationWarning, module=r"cozepy\."
)

from chat.coze.chats import (  # noqa: E402
    UpstreamAnswer,
    UpstreamChat,
    UpstreamCompleted,
    UpstreamDelta,
    UpstreamEvent,
    UpstreamFollowUp,
    UpstreamMessage,
    UpstreamReasoning,
    UpstreamRequiresAction,
    UpstreamStarted,
    achat_cancel,
    achat_open,
    achat_submit_tool_outputs,
    attachment_item,
    build_messages,
)
from chat.coze.client import (  # noqa: E402
    ShardedTransport,
    aget_client,
    coze_mode,
    get_client,
    simulator_base_url,
    start_demo_mode,
)
from chat.coze.conversations import DeletionResult, TurnAtCoze, aconversation_create, delete_at_coze  # noqa: E402
from chat.coze.errors import error_from_coze_code, map_exception  # noqa: E402
from chat.coze.feedback import afeedback_create, afeedback_delete  # noqa: E402
from chat.coze.files import UploadedFile, aupload_file  # noqa: E402

__all__ = [
    "DeletionResult",
    "ShardedTransport",
    "TurnAtCoze",
    "UploadedFile",
    "UpstreamAnswer",
    "UpstreamChat",
    "UpstreamCompleted",
    "UpstreamDelta",
    "UpstreamEvent",
    "UpstreamFollowUp",
    "UpstreamMessage",
    "UpstreamReasoning",
    "UpstreamRequiresAction",
    "UpstreamStarted",
    "achat_cancel",
    "achat_open",
    "achat_submit_tool_outputs",
    "aconversation_create",
    "afeedback_create",
    "afeedback_delete",
    "aget_client",
    "attachment_item",
    "aupload_file",
    "build_messages",
    "coze_mode",
    "delete_at_coze",
    "error_from_coze_code",
    "get_client",
    "map_exception",
    "simulator_base_url",
    "start_demo_mode",
]
