"""A configuration error at start-up is one line on stderr and exit status 1, for every entry point
(manage.py and its commands, the ASGI application under daphne, uvicorn or runserver, WSGI), not a
traceback through Django's set-up that buries the one sentence that matters."""

import sys
from collections.abc import Callable
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")


def exit_on_configuration_error(start: Callable[[], T]) -> T:
    """`start()`; an ImproperlyConfigured from it (the settings, an app's set-up) exits the process
    with `cozeproject: configuration error: <its message>` as the only output."""
    try:
        return start()
    except ImproperlyConfigured as error:
        print(f"cozeproject: configuration error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
