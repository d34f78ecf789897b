"""The turns running in this process, and the handle that stops one.

A turn registers its `TurnControl` here; a cancel request (from this process or, through the
channel layer, from another), a WebSocket `cancel` frame and shutdown stop it through the same
handle. This module imports nothing of the chat service, so the turn, the cancel listener and the
shutdown hook all depend on it and not on each other.
"""

import asyncio
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class TurnControl:
    """Shared between a running turn and whoever may stop it (cancel API, WS cancel, shutdown)."""

    owner_key: str
    reason: str = "cancelled"  # or "interrupted" when the server shuts down
    task: asyncio.Task | None = None
    chat_id: str = ""
    session_id: str = ""
    reply_pk: int | None = None  # set once the turn's start is stored
    coze_user_id: str = ""  # the session's user, set with reply_pk (what an end-user token may stop)
    resumable: bool = False  # the turn runs on when its client goes away (docs/api.md §9)

    @property
    def stopping(self) -> bool:
        """Stopped (client gone, cancel, shutdown) and busy storing how it ended, or already ended."""
        return self.task is not None and (self.task.done() or self.task.cancelling() > 0)

    def stop(self, reason: str = "cancelled") -> None:
        self.reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()


# By Coze chat id, for cancel requests; and all of them (also those not yet accepted by Coze), for shutdown.
running_turns: dict[str, TurnControl] = {}
active_turns: set[TurnControl] = set()


async def await_stopping_turn(*, owner_key: str, session_id: str, wait_seconds: float) -> bool:
    """Wait (up to `wait_seconds`) for a turn of this session that is stopping here to be stored.

    Returns whether there was one: a client that drops a reply and sends its next message at once
    then finds the session free instead of busy.
    """
    tasks = [
        control.task
        for control in active_turns
        if control.owner_key == owner_key and control.session_id == session_id and control.stopping
    ]
    if tasks:
        await asyncio.wait(tasks, timeout=wait_seconds)
    return bool(tasks)
