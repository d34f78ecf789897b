"""Django middleware of the chat app."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from chat.errors import ChatError, is_api_path, json_error_response


class JsonMethodNotAllowedMiddleware:
    """A 405 under the API's paths answers the JSON error shape (`method_not_allowed`).

    Django's `require_POST`/`require_GET` answer an empty HttpResponseNotAllowed; DRF views already
    answer JSON. The `Allow` header is kept. Sync and async without a thread hop, so SSE streams
    passing through cost nothing.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self._as_json(request, self.get_response(request))

    async def __acall__(self, request):
        return self._as_json(request, await self.get_response(request))

    @staticmethod
    def _as_json(request, response):
        if response.status_code != 405 or not is_api_path(request.path_info):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        allowed = response.get("Allow", "")
        detail = f"{request.method} is not allowed here; use {allowed}." if allowed else None
        json_response = json_error_response(ChatError("method_not_allowed", detail))
        if allowed:
            json_response["Allow"] = allowed
        return json_response
