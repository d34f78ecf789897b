"""Request bodies under daphne without holding them in memory (docs/api.md §12).

daphne hands a request to the application only once Twisted has received all of it (Twisted keeps
a body over 100 kB in a temporary file), and then in two ways that cost memory in proportion to
the body — for a 50 MiB upload, 600 MiB and 50 MiB more than the process held before:

* Twisted parses a POSTed form into `request.args`, a multipart body through the email package
  whole, at about ten times its size. daphne never reads `args`. Twisted has a switch for it
  (`parsePOSTFormSubmission`); daphne's requests are made with it off.
* daphne puts the whole body into the application's input queue at once, in 8 KiB messages, before
  the application has read any of it. The queue of an HTTP request keeps the first
  `IN_MEMORY_BYTES` of a body in memory, as before, and the rest in a temporary file, read back
  message by message as the application asks for them (an `asyncio.Queue` subclass, overriding
  the `_put` and `_get` that asyncio's own queue variants override).

Installed by `install()` from the ASGI module, when daphne serves it; uvicorn streams bodies to
the application as they arrive and needs neither.
"""

import asyncio
import inspect
import sys
import tempfile

# A body's first bytes stay in memory (every JSON request is smaller): a temporary file is opened
# only for a body larger than this.
IN_MEMORY_BYTES = 1024 * 1024


class _Spooled:
    """Where a message's body went: its size in the spool file."""

    __slots__ = ("size",)

    def __init__(self, size: int):
        self.size = size


class SpooledBodyQueue(asyncio.Queue):
    """daphne's input queue of one HTTP request, the body past IN_MEMORY_BYTES kept on disk."""

    def _init(self, maxsize):
        super()._init(maxsize)
        self._start_spooling()

    def _start_spooling(self):
        self._body_bytes, self._spool = 0, None
        # Where the next spooled chunk is written and read: kept apart, so reads may interleave
        # with writes (daphne writes all before the application reads, but need not).
        self._written, self._read = 0, 0

    def _put(self, message):
        body = message.get("body") if message.get("type") == "http.request" else None
        if body:
            self._body_bytes += len(body)
            if self._body_bytes > IN_MEMORY_BYTES:
                if self._spool is None:
                    self._spool = tempfile.TemporaryFile()
                self._spool.seek(self._written)
                self._spool.write(body)
                self._written += len(body)
                message = {**message, "body": _Spooled(len(body))}
        self._queue.append(message)

    def _get(self):
        message = self._queue.popleft()
        body = message.get("body")
        if isinstance(body, _Spooled):
            self._spool.seek(self._read)  # (a seek flushes what was written)
            message = {**message, "body": self._spool.read(body.size)}
            self._read += body.size
            if not message.get("more_body", False):
                self._spool.close()
        return message


def _spool_bodies(create_application):
    def create_application_spooling(self, protocol, scope):
        queue = create_application(self, protocol, scope)
        if queue is not None and scope.get("type") == "http":
            # The application already holds `queue.get`; asyncio's Queue looks `_get` up on the
            # instance, so the subclass takes effect for the messages daphne puts next.
            queue.__class__ = SpooledBodyQueue
            queue._start_spooling()
        return queue

    create_application_spooling.spools_bodies = True
    return create_application_spooling


def install() -> None:
    """Both changes, once, when daphne (imported before the application) is serving."""
    daphne_http = sys.modules.get("daphne.http_protocol")
    daphne_server = sys.modules.get("daphne.server")
    if daphne_http is None or daphne_server is None:
        return
    request = daphne_http.WebRequest
    if not getattr(request, "keeps_forms_unparsed", False) and (
        "parsePOSTFormSubmission" in inspect.signature(daphne_http.http.Request.__init__).parameters
    ):
        make_request = request.__init__

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("parsePOSTFormSubmission", False)
            make_request(self, *args, **kwargs)

        request.__init__ = __init__
        request.keeps_forms_unparsed = True
    server = daphne_server.Server
    if not getattr(server.create_application, "spools_bodies", False):
        server.create_application = _spool_bodies(server.create_application)
