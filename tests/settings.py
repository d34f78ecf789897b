"""The test suite's settings (pytest-django's DJANGO_SETTINGS_MODULE, see pyproject.toml).

The production settings module, read with what an operator would set on a test machine: a secret
key, local host names, the built-in simulator as the Coze upstream (`CHAT_DEMO=1`; the suite's
fixtures then point the adapter at a simulator of their own), no token delay and plain cookies.
Those variables are set only while the settings are read, unless the real environment sets them,
so the servers the tests start as subprocesses see the real environment. Then what only tests
want: static files straight from the apps, without the manifest `collectstatic` would build.
"""

import os

TEST_ENVIRONMENT = {
    "DJANGO_SECRET_KEY": "tests-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
    "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1,[::1],testserver",
    "CHAT_DEMO": "1",
    "COZE_SIMULATOR_TOKEN_DELAY_MS": "0",
    "DJANGO_SECURE_COOKIES": "0",
}

_added = [name for name in TEST_ENVIRONMENT if name not in os.environ]
os.environ.update({name: TEST_ENVIRONMENT[name] for name in _added})
try:
    from cozeproject.settings import *  # noqa: F403
    from cozeproject.settings import STORAGES
finally:
    for name in _added:
        del os.environ[name]

STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
# Tests talk plain HTTP to local servers; no proxy sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = None
