"""Playing a chat: its plan of frames, streamed to the client or run in the background."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .plans import ChatPlan, ChatPlanner
from .state import Chat
from .wire import DONE_FRAME, ERROR_EVENT_FRAME, STUDIO_DONE_FRAME, Receive, Request, Send, SimulatedDrop, sse_frame


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


class ChatPlayback(ChatPlanner):
    """Plays a chat's plan, with Coze's timing, into a stream or into nothing."""

    async def _run(self, chat: Chat, plan: ChatPlan, out: StreamOutput | NullOutput) -> None:
        """Play ``plan`` into ``out`` with its timing, updating ``chat`` as Coze would."""
        if not plan.continued:
            out.write(sse_frame("conversation.chat.created", chat.as_dict(status="created")))
        out.write(sse_frame("conversation.chat.in_progress", chat.as_dict()))
        if plan.tool_calls:
            await out.pause(plan.first_delay)
            for message in plan.lead_messages:
                out.write(sse_frame("conversation.message.completed", message))
            self._require_action(chat, plan)
            out.write(sse_frame("conversation.chat.requires_action", chat.as_dict()))
            out.write(self._end_frame())
            return
        for message in plan.lead_messages:
            out.write(sse_frame("conversation.message.completed", message))

        frames = plan.reasoning_frames + plan.answer_frames
        cut = len(plan.reasoning_frames) + len(plan.answer_frames) // 2 if plan.fault else len(frames)
        await self._deltas(chat, frames[:cut], out, plan.first_delay, plan.token_delay)
        if plan.fault == "silence":
            await out.pause(plan.silence)
        elif plan.fault == "chat_failed":
            self._finish(chat, "failed", error={"code": 5000, "msg": "internal error"})
            out.write(sse_frame("conversation.chat.failed", chat.as_dict()))
            out.write(self._end_frame())
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

        self._finish(chat, "completed", usage=plan.usage, messages=plan.lead_messages + plan.final_messages)
        for message in plan.final_messages:
            out.write(sse_frame("conversation.message.completed", message))
        out.write(sse_frame("conversation.chat.completed", chat.as_dict(status="completed")))
        out.write(self._end_frame())

    def _end_frame(self) -> bytes:
        """The last event of a stream: ``done``, or Studio's ``conversation.stream.done``."""
        return STUDIO_DONE_FRAME if self.config.studio else DONE_FRAME

    def _require_action(self, chat: Chat, plan: ChatPlan) -> None:
        """Pause ``chat`` for its tool calls: the conversation stays busy until the outputs come,
        the chat is canceled, or ``tool_output_timeout_s`` passes (then the chat fails)."""
        chat.messages = [*chat.messages, *plan.lead_messages]
        self._store(chat, plan.lead_messages)
        if chat.status != "in_progress":  # canceled meanwhile: nothing to wait for
            chat.finished_at = time.time()
            self._release(chat)
            return
        chat.status = "requires_action"
        chat.required_action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": plan.tool_calls}}
        timer = asyncio.ensure_future(self._expire_tool_calls(chat))
        chat.tool_timer = timer
        self.state.background.add(timer)
        timer.add_done_callback(self.state.background.discard)

    async def _expire_tool_calls(self, chat: Chat) -> None:
        await asyncio.sleep(self.config.tool_output_timeout_s)
        if chat.status == "requires_action":
            now = time.time()
            chat.status = "failed"
            chat.failed_at = int(now)
            chat.finished_at = now
            timeout = self.config.tool_output_timeout_s
            chat.last_error = {"code": 5000, "msg": f"the tool outputs did not arrive within {timeout:g} s"}
            self._release(chat)

    def _store(self, chat: Chat, messages: list[dict[str, Any]]) -> None:
        """Keep ``messages`` in the chat's conversation (unless the chat asked not to)."""
        conversation = self.state.conversations.get(chat.conversation_id)
        if conversation is not None and chat.auto_save_history:
            conversation.messages.extend(messages)

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
            chat.messages = [*chat.messages, *messages]
            self._store(chat, messages)
        chat.finished_at = now
        self._release(chat)

    def _release(self, chat: Chat) -> None:
        """Free the chat's conversation for the next chat, unless it waits for tool outputs."""
        if chat.status == "requires_action":
            return
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
