"""Browsers as owners (docs/api.md §2): a signed-in Django user, or — when CHAT_ALLOW_ANONYMOUS is
on — an anonymous browser known by an id kept in its session. Both present a session cookie, so
Django's CSRF check applies to their unsafe requests; key-based callers (chat.access.auth) don't
need it.
"""

import uuid

from django.conf import settings
from django.middleware.csrf import CsrfViewMiddleware
from rest_framework import authentication, exceptions

from chat.domain.errors import ChatError, csrf_detail
from chat.domain.inputs import Owner

BROWSER_SESSION_KEY = "chat_browser_id"


def owner_for_user(user) -> Owner:
    return Owner(key=f"user:{user.pk}", user_id=user.pk)


def owner_for_browser(browser_id: str) -> Owner:
    return Owner(key=f"browser:{browser_id}")


CSRF_SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


def has_session_cookie(request) -> bool:
    """Whether the caller presents a Django session cookie: a browser that loaded the page or signed in."""
    return settings.SESSION_COOKIE_NAME in request.COOKIES


def csrf_failure(request) -> str | None:
    """Why Django's CSRF check rejects a session-authenticated request, in Django's words
    ("CSRF token missing."); None when it passes (safe methods always do)."""
    if request.method in CSRF_SAFE_METHODS:
        return None

    def no_response(request):  # pragma: no cover - never called by process_view
        return None

    check = CsrfViewMiddleware(no_response)
    check.process_request(request)
    rejection = check.process_view(request, None, (), {})
    if rejection is None:
        return None
    # CSRF_FAILURE_VIEW (chat.transports.errors.csrf_failure_view) keeps Django's reason on its response.
    return getattr(rejection, "csrf_reason", "") or "The CSRF token is missing or incorrect."


def _csrf_or_raise(request) -> None:
    reason = csrf_failure(request)
    if reason:
        raise ChatError("forbidden", csrf_detail(reason))


def ensure_browser_id(request) -> str:
    """Give this browser an owner id in its session (the chat page calls this)."""
    browser_id = request.session.get(BROWSER_SESSION_KEY)
    if not browser_id:
        browser_id = uuid.uuid4().hex
        request.session[BROWSER_SESSION_KEY] = browser_id
    return browser_id


async def abrowser_owner(request) -> Owner | None:
    """For async views: the signed-in user or the anonymous browser behind a session cookie (CSRF
    checked on unsafe methods), or None when the request carries neither."""
    user = await request.auser()
    if user.is_authenticated:
        _csrf_or_raise(request)
        return owner_for_user(user)
    if settings.CHAT_ALLOW_ANONYMOUS and has_session_cookie(request):
        _csrf_or_raise(request)
        browser_id = await request.session.aget(BROWSER_SESSION_KEY)
        if not browser_id:
            browser_id = uuid.uuid4().hex
            await request.session.aset(BROWSER_SESSION_KEY, browser_id)
        return owner_for_browser(browser_id)
    return None


# --- DRF --------------------------------------------------------------------------------------


class BrowserSessionAuthentication(authentication.BaseAuthentication):
    """A logged-in Django session, or an anonymous browser session (a session cookie) when allowed;
    CSRF enforced. Without a session cookie this does not apply, and IsChatOwner answers 401."""

    def authenticate(self, request):
        django_request = request._request
        user = getattr(django_request, "user", None)
        if user is not None and user.is_authenticated:
            owner = owner_for_user(user)
        elif settings.CHAT_ALLOW_ANONYMOUS and has_session_cookie(django_request):
            browser_id = django_request.session.get(BROWSER_SESSION_KEY)
            if not browser_id:
                if request.method in ("GET", "HEAD", "OPTIONS"):
                    return None  # nothing of theirs to show; don't create a session for it
                browser_id = ensure_browser_id(django_request)
            owner = owner_for_browser(browser_id)
        else:
            return None
        reason = csrf_failure(django_request)
        if reason:
            raise exceptions.PermissionDenied(csrf_detail(reason))
        return (user if user is not None and user.is_authenticated else None, owner)
