"""Inspection routes (``/_sim/…``): what the simulator received and did, for tests and benchmarks."""

from __future__ import annotations

from .state import SimulatorBase
from .wire import Request, Response, json_response


class InspectionRoutes(SimulatorBase):
    """``/_sim/stats``, ``/_sim/chats/{id}``, ``/_sim/conversations/{id}``, ``/_sim/files/{id}``,
    ``/_sim/feedback``, ``/_sim/deletions``: no authentication."""

    async def _sim_stats(self, request: Request) -> Response:
        return json_response(200, self.state.stats())

    async def _sim_file(self, request: Request) -> Response:
        uploaded = self.state.files.get(request.path.split("/")[3])
        if uploaded is None:
            return json_response(404, {"code": 4000, "msg": "file not found"})
        return json_response(200, uploaded.inspection())

    async def _sim_chat(self, request: Request) -> Response:
        chat = self.state.chats.get(request.path.split("/")[3])
        if chat is None:
            return json_response(404, {"code": 4001, "msg": "chat not found"})
        return json_response(200, chat.inspection())

    async def _sim_conversation(self, request: Request) -> Response:
        conversation = self.state.conversations.get(request.path.split("/")[3])
        if conversation is None:
            return json_response(404, {"code": 4002, "msg": "conversation not found"})
        return json_response(200, conversation.inspection())

    async def _sim_feedback(self, request: Request) -> Response:
        return json_response(200, {"feedback": self.state.feedback})

    async def _sim_deletions(self, request: Request) -> Response:
        return json_response(200, {"deletions": self.state.deletions})
