"""What a turn's database steps read and write: its start, its context, its outcome; shared by
the PostgreSQL functions' path (`chat.turn.store`) and the ORM's (`chat.turn.store_orm`)."""

from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import ExpressionWrapper, Q, Value
from django.db.models.functions import Now

from chat.domain import event_ids, redaction, transcripts
from chat.domain.errors import ChatError
from chat.domain.events import ToolCall, Usage
from chat.domain.inputs import ChatRequest, Owner
from chat.files.attachments import ResolvedAttachments
from sessions_admin.models import Reply


@dataclass(frozen=True, slots=True)
class Route:
    """What the Coze request of a turn needs from its session: where and as whom to ask."""

    coze_conversation_id: str  # "" when the turn starts a new Coze conversation
    bot_id: str
    coze_user_id: str


def no_conversation() -> ChatError:
    """`not_found` for a session (a Coze conversation) the owner does not have."""
    return ChatError("not_found", "No such conversation.", errors={"conversation_id": ["No such conversation."]})


def no_chat() -> ChatError:
    """`not_found` for a reply (a Coze chat) the owner does not have."""
    return ChatError("not_found", "No such chat.", errors={"chat_id": ["No such chat."]})


class RouteChanged(Exception):
    """The session moved on (cleared, another bot) since the route the turn was sent with was read."""


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What storing the start of a turn needs: who asks what, in which session, with which lock."""

    owner: Owner
    chat_request: ChatRequest
    session_id: str
    bot_id: str
    transport: str
    worker_channel: str
    lock_token: str
    attachments: ResolvedAttachments
    # The route the turn's Coze chat was sent with; checked under the session's row lock when given.
    expected_route: Route | None = None


@dataclass(frozen=True, slots=True)
class TurnContext:
    session_pk: int
    session_id: str
    conversation_pk: int
    reply_pk: int
    lock_token: str
    route: Route
    owner_key: str
    transport: str
    question: str = ""
    transcript_hash: str = ""  # the conversation's digest before this turn (see chat.domain.transcripts)


@dataclass(slots=True)
class TurnOutcome:
    status: str = Reply.Status.IN_PROGRESS
    answer_parts: list[str] = field(default_factory=list)
    follow_ups: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    error: ChatError | None = None
    chat_id: str = ""
    conversation_id: str = ""
    logid: str = ""
    message_id: str = ""
    first_token_at: float | None = None
    duration: float = 0.0
    finishing: bool = False  # the finish is being stored (and stores Coze's ids with it)
    # Per event the reply has yielded so far: the characters it added to the answer. Stored with
    # the finish, so that any event id a client was given can be resumed after the replay window
    # (docs/api.md §9, `chat.resume.resuming`).
    # None: not known (a crashed worker's reply whose replay buffer was gone).
    event_chars: list[int] | None = field(default_factory=list)
    # Local tools (docs/api.md §13): the calls the reply pauses for, and the calls of earlier
    # pauses of the same reply with their outputs (what `Reply.required_action` keeps).
    tool_calls: tuple[ToolCall, ...] = ()
    tools_answered: list[dict] = field(default_factory=list)
    # Whether CHAT_REDACT changed the stored answer: noted by `stored_answer`, so the finish
    # redacts a long answer once, not twice (`answer_was_redacted`).
    answer_redacted: bool | None = None

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)


@dataclass(frozen=True, slots=True)
class PausedTurn:
    """A reply paused for local tools, claimed back (in progress again) by `turn_resume`: its turn,
    and what `Reply.required_action` holds (the calls, their outputs as far as given, and the
    answer written before the pause)."""

    turn: TurnContext
    required_action: dict


def required_action_of(outcome: TurnOutcome) -> dict:
    """`Reply.required_action` for a reply pausing now: earlier calls with their outputs, the
    pending ones, and the answer so far (redacted: it is stored)."""
    pending = [call.as_dict() for call in outcome.tool_calls]
    return {"tool_calls": [*outcome.tools_answered, *pending], "answer": redacted(outcome.answer)}


def pending_calls(required_action: dict | None) -> list[dict]:
    """The calls of a paused reply still waiting for their outputs."""
    return [call for call in (required_action or {}).get("tool_calls", []) if "output" not in call]


def with_outputs(required_action: dict, outputs: dict[str, str]) -> dict:
    """`required_action` with the given outputs (by call id) recorded on their calls."""
    calls = [
        {**call, "output": outputs[call["id"]]} if "output" not in call and call["id"] in outputs else call
        for call in required_action.get("tool_calls", [])
    ]
    return {**required_action, "tool_calls": calls}


def default_user(owner: Owner) -> str:
    """The Coze user_id of a new session whose request names none: an end-user token's user (its
    requests never name one: `ChatRequest.narrowed_to`), else COZE_USER_ID."""
    return owner.end_user_id or settings.COZE_USER_ID


def lease_end():
    """The end of a lock lease taken now, in the database's clock."""
    return ExpressionWrapper(
        Now() + Value(timedelta(seconds=settings.CHAT_SESSION_LOCK_TTL)), output_field=models.DateTimeField()
    )


def lock_free() -> Q:
    """Sessions whose lock is free now, in the database's clock."""
    return Q(locked_until__isnull=True) | Q(locked_until__lt=Now())


def route_of(*, coze_user_id: str, conversation: dict | None, bot_id: str, requested_user_id: str | None) -> Route:
    continues = conversation is not None and conversation["bot_id"] == bot_id
    return Route(
        coze_conversation_id=conversation["coze_conversation_id"] if continues else "",
        bot_id=bot_id,
        coze_user_id=requested_user_id or coze_user_id,
    )


def redacted(text: str) -> str:
    """`text` as it is stored: with the personal data CHAT_REDACT names replaced (docs/api.md §15).
    What is sent to Coze and streamed to the client is never this, but the original."""
    return redaction.redact(text, settings.CHAT_REDACT)


def stored_question(chat_request: ChatRequest) -> str:
    """The question message the turn stores."""
    return redacted(chat_request.user_text)


def stored_answer(outcome: TurnOutcome) -> str | None:
    """The answer message the turn leaves: what came of it (redacted), or an empty one for a
    completed reply; None when nothing came and the reply did not complete. (Joined once: a long
    reply has thousands of parts.)"""
    answer = outcome.answer
    if not answer and outcome.status != Reply.Status.COMPLETED:
        return None
    stored = redacted(answer)
    outcome.answer_redacted = stored != answer
    return stored


def stored_follow_ups(outcome: TurnOutcome) -> list[str]:
    """The suggested follow-up questions the turn stores (redacted like the answer)."""
    return [redacted(text) for text in outcome.follow_ups]


def answer_was_redacted(outcome: TurnOutcome) -> bool:
    """Whether the stored answer differs from the one streamed (CHAT_REDACT took something out),
    so that a resume from a position in the streamed answer can't be served from the stored one."""
    if not settings.CHAT_REDACT:
        return False
    if outcome.answer_redacted is not None:
        return outcome.answer_redacted
    answer = outcome.answer
    return bool(answer) and redacted(answer) != answer


def answer_chars(event) -> int:
    """The characters an event adds to the reply's answer (its `delta`s carry the answer)."""
    return len(event.content) if event.type == "delta" else 0


def answer_offsets(outcome: TurnOutcome) -> str:
    """`Reply.answer_offsets`: the characters each event before the last added to the answer, or
    UNKNOWN_OFFSETS when they are not known."""
    if outcome.event_chars is None:
        return event_ids.UNKNOWN_OFFSETS
    return ",".join(map(str, outcome.event_chars))


def ttft_ms(outcome: TurnOutcome) -> int | None:
    return round(outcome.first_token_at * 1000) if outcome.first_token_at is not None else None


def new_transcript_hash(turn: TurnContext, answer: str | None) -> str | None:
    """The conversation's digest after a turn that stored `answer` (what the OpenAI path finds
    resent histories by); None when it stays as it is."""
    if answer is None or not turn.transcript_hash:
        return None
    return transcripts.transcript_extend(
        turn.transcript_hash, [(transcripts.USER, turn.question), (transcripts.ASSISTANT, answer)]
    )
