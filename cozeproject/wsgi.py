"""WSGI entry point; the product is served over ASGI (see asgi.py) — WSGI cannot stream SSE well."""

import os

from django.core.wsgi import get_wsgi_application

from cozeproject.configuration import exit_on_configuration_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cozeproject.settings")

application = exit_on_configuration_error(get_wsgi_application)
