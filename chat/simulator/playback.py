"""Playing a chat: its plan of frames, streamed to the client or run in the background."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from .bot import FOLLOW_UPS, MID_STREAM_FAULTS, REASONING_TEXT, VERBOSE_CONTENT, Directives, answer_text, split_deltas
from .state import Chat, Conversation, SimulatorBase
from .wire import DONE_FRAME, ERROR_EVENT_FRAME, Receive, Request, Send, SimulatedDrop, json_bytes, sse_frame


@dataclass
class ChatPlan:
    """Everything a chat will send, serialised up front so the per-delta work is one send."""

    reasoning_frames: list[bytes]
    answer_frames: list[bytes]
    final_messages: list[dict[str, Any]]
    usage: dict[str, int]
    first_delay: float
    token_delay: float
    fault: str | None
    silence: float


class StreamOutput:
    """Buffers frames and sends them, one ``send`` per burst, whenever the chat pauses."""

    __slots__ = ("_buffer", "_send")

    def __init__(self, send: Send):
        self._send = send
        self._buffer: list[bytes] = []

    def write(self, frame: bytes) -> None:
        self._buffer.append(frame)

    def take(self) -> bytes:
        body = b"".join(self._buffer)
        self._buffer = []
        return body

    async def flush(self) -> None:
        if self._buffer:
            await self._send({"type": "http.response.body", "body": self.take(), "more_body": True})

    async def pause(self, seconds: float) -> None:
        if seconds > 0:
            await self.flush()
            await asyncio.sleep(seconds)


class NullOutput:
    """Where a non-streaming chat "sends": nowhere, but with the same timing."""

    __slots__ = ()

    def write(self, frame: bytes) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)


class ChatPlayback(SimulatorBase):
    """Plans a chat and plays it, with Coze's timing, into a stream or into nothing."""

    def _plan(
        self, chat: Chat, conversation: Conversation, text: str, directives: Directives, received: str = ""
    ) -> ChatPlan:
        answer = answer_text(text, directives, conversation.turns)
        if directives.echo is None:  # an echo stays exactly the text after the directive
            answer += received
        message = {
            "id": self.new_id(),
            "conversation_id": chat.conversation_id,
            "bot_id": chat.bot_id,
            "role": "assistant",
            "type": "answer",
        }
        tail = {
            "content_type": "text",
            "chat_id": chat.id,
            "section_id": chat.section_id,
        }
        # Pre-serialise the message around its content: each delta only dumps its piece.
        head = b"event:conversation.message.delta\ndata:" + json_bytes(message)[:-1]
        tail_bytes = b"," + json_bytes(tail)[1:] + b"\n\n"
        answer_frames = [head + b',"content":' + json_bytes(piece) + tail_bytes for piece in split_deltas(answer)]
        reasoning_frames = []
        if "reasoning" in directives.flags:
            reasoning_frames = [
                head + b',"content":"","reasoning_content":' + json_bytes(piece) + tail_bytes
                for piece in split_deltas(REASONING_TEXT)
            ]

        stamps = {"created_at": chat.created_at, "updated_at": chat.created_at}

        def completed(kind: str, content: str, message_id: str) -> dict[str, Any]:
            return {
                **message,
                "id": message_id,
                "type": kind,
                "content": content,
                **tail,
                **stamps,
            }

        answer_message = completed("answer", answer, message["id"])
        if reasoning_frames:
            answer_message["reasoning_content"] = REASONING_TEXT
        final_messages = [
            answer_message,
            completed("verbose", VERBOSE_CONTENT, self.new_id()),
            *(completed("follow_up", question, self.new_id()) for question in FOLLOW_UPS),
        ]
        section_chars = sum(map(len, conversation.turns)) + len(text)
        output_count = len(reasoning_frames) + len(answer_frames)
        input_count = section_chars // 4 + 1
        first_ms = directives.first_delay_ms
        slow_ms = directives.slow_ms
        fault = next((f for f in MID_STREAM_FAULTS if f in directives.flags), None)
        return ChatPlan(
            reasoning_frames=reasoning_frames,
            answer_frames=answer_frames,
            final_messages=final_messages,
            usage={
                "token_count": input_count + output_count,
                "output_count": output_count,
                "input_count": input_count,
            },
            first_delay=(self.config.first_token_delay_ms if first_ms is None else first_ms) / 1000,
            token_delay=(self.config.token_delay_ms if slow_ms is None else slow_ms) / 1000,
            fault=fault,
            silence=directives.silence_s or 0.0,
        )

    async def _run(self, chat: Chat, plan: ChatPlan, out: StreamOutput | NullOutput) -> None:
        """Play ``plan`` into ``out`` with its timing, updating ``chat`` as Coze would."""
        out.write(sse_frame("conversation.chat.created", chat.as_dict(status="created")))
        out.write(sse_frame("conversation.chat.in_progress", chat.as_dict()))

        frames = plan.reasoning_frames + plan.answer_frames
        cut = len(plan.reasoning_frames) + len(plan.answer_frames) // 2 if plan.fault else len(frames)
        await self._deltas(chat, frames[:cut], out, plan.first_delay, plan.token_delay)
        if plan.fault == "silence":
            await out.pause(plan.silence)
        elif plan.fault == "chat_failed":
            self._finish(chat, "failed", error={"code": 5000, "msg": "internal error"})
            out.write(sse_frame("conversation.chat.failed", chat.as_dict()))
            out.write(DONE_FRAME)
            return
        elif plan.fault == "error_event":
            self._finish(chat, "failed", error={"code": 4013, "msg": "model error"})
            out.write(ERROR_EVENT_FRAME)
            return
        elif plan.fault == "drop":
            self._finish(chat, "failed", error={"code": 5000, "msg": "connection dropped"})
            await out.flush()
            raise SimulatedDrop(f"[sim:drop] cuts the stream of chat {chat.id}")
        await self._deltas(chat, frames[cut:], out, plan.token_delay if cut else plan.first_delay, plan.token_delay)
        if not frames:
            await out.pause(plan.first_delay)

        self._finish(chat, "completed", usage=plan.usage, messages=plan.final_messages)
        for message in plan.final_messages:
            out.write(sse_frame("conversation.message.completed", message))
        out.write(sse_frame("conversation.chat.completed", chat.as_dict(status="completed")))
        out.write(DONE_FRAME)

    @staticmethod
    async def _deltas(
        chat: Chat, frames: list[bytes], out: StreamOutput | NullOutput, delay: float, token_delay: float
    ) -> None:
        """Send delta ``frames``: ``delay`` before the first, ``token_delay`` before the rest."""
        for frame in frames:
            await out.pause(delay)
            delay = token_delay
            out.write(frame)
            chat.tokens_sent += 1

    def _finish(
        self,
        chat: Chat,
        status: str,
        *,
        error: dict[str, Any] | None = None,
        usage: dict[str, int] | None = None,
        messages: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record the end of a chat and free its conversation.

        A chat canceled meanwhile stays ``canceled``, but keeps its usage and messages: like
        Coze, a cancel does not stop the work (nor the billing).
        """
        now = time.time()
        if chat.status == "in_progress":
            chat.status = status
            if status == "completed":
                chat.completed_at = int(now)
            else:
                chat.failed_at = int(now)
                chat.last_error = error or {"code": 5000, "msg": "internal error"}
        if usage is not None:
            chat.usage = usage
        if messages is not None:
            chat.messages = messages
        chat.finished_at = now
        self._release(chat)

    def _release(self, chat: Chat) -> None:
        conversation = self.state.conversations.get(chat.conversation_id)
        if conversation is not None and conversation.running_chat_id == chat.id:
            conversation.running_chat_id = None

    async def _run_in_background(self, chat: Chat, plan: ChatPlan) -> None:
        try:
            await self._run(chat, plan, NullOutput())
        except SimulatedDrop:
            pass  # already recorded as failed; there is no connection to cut
        finally:
            self._release(chat)

    async def _stream(self, request: Request, chat: Chat, plan: ChatPlan) -> None:
        """Answer with SSE while a watcher task notices a client disconnect at once."""
        state = self.state
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-tt-logid", request.logid.encode()),
        ]
        await request.send({"type": "http.response.start", "status": 200, "headers": headers})
        out = StreamOutput(request.send)
        producer = asyncio.ensure_future(self._run(chat, plan, out))
        watcher = asyncio.ensure_future(self._watch_disconnect(request.receive, chat, producer))
        state.open_streams += 1
        state.total_streams += 1
        try:
            try:
                await producer
            except asyncio.CancelledError:
                if chat.client_disconnected_at is None:
                    raise  # we are being cancelled ourselves (server shutdown)
                return
            finally:
                watcher.cancel()
            await request.send({"type": "http.response.body", "body": out.take()})
        finally:
            state.open_streams -= 1
            if not producer.done():
                producer.cancel()
            self._release(chat)

    async def _watch_disconnect(self, receive: Receive, chat: Chat, producer: asyncio.Future) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if producer.done():
            return
        now = time.time()
        chat.client_disconnected_at = now
        self.state.client_disconnects += 1
        if chat.status == "in_progress":
            chat.status = "canceled"
        if chat.finished_at is None:
            chat.finished_at = now
        self._release(chat)
        producer.cancel()
