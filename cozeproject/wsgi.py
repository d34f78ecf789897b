"""WSGI entry point; the product is served over ASGI (see asgi.py) — WSGI cannot stream SSE well."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")

application = get_wsgi_application()
