"""Staff review of the chat records in Django admin.

Conversations (read-only transcripts), chat sessions, token usage per reply (with totals, a CSV
export and a usage dashboard) and API clients. Nothing here lets staff write a transcript: the
record admins have no add, change or delete permission, whatever the user's permissions say.

Built for big tables (100k conversations, 1M messages, 500k replies): every list orders by an
indexed column, filters match indexes, related rows come with the page's query
(`list_select_related`, annotations), and the paginator counts at most a few pages ahead instead
of the whole table. Content is only ever rendered through auto-escaping templates or
`format_html`.
"""

import secrets

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR, SEARCH_VAR
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Avg, CharField, Count, Exists, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Cast, Concat
from django.http import HttpRequest, HttpResponseBadRequest
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from chat.access.alerts import mask_webhook_in
from sessions_admin import csv_export, export
from sessions_admin.dashboard import (
    ERROR_STATUSES,
    NO_PRICE_NOTE,
    budget_bar,
    client_budgets,
    compact,
    dashboard_charts,
    horizontal_bar_chart,
    owner_labels,
    token_cost,
    token_prices,
    usage_dashboard,
)
from sessions_admin.models import (
    API_KEY_PREFIX,
    ApiClient,
    BudgetAlert,
    ChatFile,
    ChatSession,
    Conversation,
    DailyUsage,
    Feedback,
    FeedbackForward,
    Message,
    Reply,
    hash_api_key,
)

CUT_STATUSES = (Reply.Status.CANCELLED, Reply.Status.INTERRUPTED)
DASHBOARD_DAYS = (7, 30, 90)
DASHBOARD_CACHE_SECONDS = 60
TRANSCRIPT_TURNS_PER_PAGE = 100
# Message text is searched with a trigram index on PostgreSQL; shorter terms can't use it.
MIN_TEXT_SEARCH = 3

admin.site.site_header = "cozeproject admin"
admin.site.site_title = "cozeproject admin"
admin.site.index_title = "Chat records and API clients"
# The app list beside every page duplicates the index and the breadcrumbs, and on a 1,280 px
# screen it leaves the wide chat-record lists too little room.
admin.site.enable_nav_sidebar = False


# --- shared pieces ----------------------------------------------------------------------------


class CappedCountPaginator(Paginator):
    """Never counts a whole table: reads the ids of the requested page and a few pages after it.

    One query walks the list in its order (an index scan for every ordering the admin offers) and
    stops after `limit + 1` ids; `count` is their number, exact when the result is small and
    otherwise a lower bound (`count_capped`; the pagination template then says "more than N").
    The page itself is then fetched by primary key.
    """

    pages_ahead = 5

    def __init__(self, object_list, per_page, *, page_number: int = 1, pages_ahead: int | None = None, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        self.limit = (max(page_number, 1) + (self.pages_ahead if pages_ahead is None else pages_ahead)) * per_page

    @cached_property
    def ids(self) -> list:
        return list(self.object_list.values_list("pk", flat=True)[: self.limit + 1])

    @cached_property
    def count(self) -> int:
        return len(self.ids)

    @property
    def count_capped(self) -> bool:
        return self.count > self.limit

    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        ids = self.ids[bottom:top]
        rows = {row.pk: row for row in self.object_list.order_by().filter(pk__in=ids)}
        return self._get_page([rows[pk] for pk in ids if pk in rows], number, self)


class BigTableAdmin(admin.ModelAdmin):
    """Read-only, paginated without full counts, no bulk actions."""

    show_full_result_count = False
    list_per_page = 100
    actions = None

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        try:
            page_number = int(request.GET.get(PAGE_VAR, 1))
        except ValueError:
            page_number = 1
        return CappedCountPaginator(
            queryset,
            per_page,
            orphans=orphans,
            allow_empty_first_page=allow_empty_first_page,
            page_number=page_number,
            # A search for a common word checks rows one by one: look fewer pages ahead.
            pages_ahead=2 if request.GET.get(SEARCH_VAR) else None,
        )

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting goes through `clear_chat_sessions` or the session API, in batches.
        return False


def owner_label(owner_key: str, api_client: ApiClient | None, user) -> str:
    if api_client is not None:
        return f"API client {api_client.name}"
    if user is not None:
        return f"user {user.get_username()}"
    return owner_labels([owner_key])[owner_key]


def owner_link(changelist_url: str, owner_key: str, label: str, *, cut: bool = False):
    query = urlencode({"owner": owner_key})
    if cut:
        return format_html('<a class="cut" href="{}?{}" title="{}">{}</a>', changelist_url, query, label, label)
    return format_html('<a href="{}?{}">{}</a>', changelist_url, query, label)


def plural(count: int, noun: str) -> str:
    """ "1 message", "2 messages", "1,024 messages"."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def cut_text(text: str):
    """Text that a narrow column cuts with an ellipsis (the `cut` class), whole in its tooltip."""
    return format_html('<span class="cut" title="{}">{}</span>', text, text)


def short_time(moment):
    """A time as "Dec 02 14:05" (this year's dates need no year), whole in its tooltip."""
    if moment is None:
        return None
    local = timezone.localtime(moment)
    short = local.strftime("%b %d %H:%M" if local.year == timezone.localtime().year else "%b %d %Y")
    return format_html(
        '<time datetime="{}" title="{}">{}</time>', local.isoformat(), local.strftime("%Y-%m-%d %H:%M:%S %Z"), short
    )


def milliseconds_text(milliseconds: int | None) -> str | None:
    """A latency in the unit that reads best (850 ms, 12.3 s, 4:05 min), exact in its tooltip."""
    if milliseconds is None:
        return None  # admin shows its empty-value dash
    if milliseconds < 1000:
        short = f"{milliseconds} ms"
    elif milliseconds < 60_000:
        short = f"{milliseconds / 1000:.1f} s"
    else:
        minutes, seconds = divmod(round(milliseconds / 1000), 60)
        short = f"{minutes}:{seconds:02d} min"
    return format_html('<span title="{} ms">{}</span>', f"{milliseconds:,}", short)


def cost_text(input_tokens: int | None, output_tokens: int | None) -> str:
    cost = token_cost(input_tokens, output_tokens)
    return "" if cost is None else f"≈ {cost}"


class PricedFieldsMixin:
    """Leaves the "estimated cost" field out of a change page while no token prices are set."""

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if token_prices() is None and "cost" in fields:
            fields.remove("cost")
        return fields


def distinct_values(model, column: str) -> list[str]:
    """Distinct values of an indexed column, cheaply: PostgreSQL walks the index (a "skip scan")."""
    if connection.vendor != "postgresql":
        return list(model.objects.order_by(column).values_list(column, flat=True).distinct())
    table, name = connection.ops.quote_name(model._meta.db_table), connection.ops.quote_name(column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH RECURSIVE walk(value) AS (
                (SELECT {name} FROM {table} ORDER BY {name} LIMIT 1)
                UNION ALL
                SELECT (SELECT {name} FROM {table} WHERE {name} > walk.value ORDER BY {name} LIMIT 1)
                FROM walk WHERE walk.value IS NOT NULL
            )
            SELECT value FROM walk WHERE value IS NOT NULL
            """  # noqa: S608 (names come from the model, not from input)
        )
        return [row[0] for row in cursor.fetchall()]


class BotFilter(admin.SimpleListFilter):
    title = "bot"
    parameter_name = "bot"
    field = "bot_id"

    def lookups(self, request, model_admin):
        # Every bot that was ever used has replies; their (bot_id, started_at) index lists them cheaply.
        return [(bot, bot) for bot in distinct_values(Reply, "bot_id")]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.field: self.value()})
        return queryset


class OwnerFilter(admin.SimpleListFilter):
    """By kind of owner or by API client; any owner key ("user:5", "browser:…") works in the URL."""

    title = "owner"
    parameter_name = "owner"
    prefix = ""  # path from the admin's model to the fields of ChatSession/Reply holding the owner

    def lookups(self, request, model_admin):
        choices = [("clients", "Any API client"), ("users", "Any logged-in user"), ("browsers", "Anonymous browsers")]
        choices += [(client.owner_key, f"API client {client.name}") for client in ApiClient.objects.order_by("name")]
        return choices

    def queryset(self, request, queryset):
        value, prefix = self.value(), self.prefix
        if not value:
            return queryset
        if value == "clients":
            return queryset.filter(**{f"{prefix}api_client__isnull": False})
        if value == "users":
            return queryset.filter(**{f"{prefix}user__isnull": False})
        if value == "browsers":
            return queryset.filter(**{f"{prefix}api_client__isnull": True, f"{prefix}user__isnull": True})
        return queryset.filter(**{f"{prefix}owner_key": value})

    def choices(self, changelist):
        yield from super().choices(changelist)
        value = self.value()
        if value and value not in {choice for choice, _ in self.lookup_choices}:
            # An owner picked from a row (a user or a browser): show it, by name, as the selected choice.
            yield {
                "selected": True,
                "query_string": changelist.get_query_string(),
                "display": owner_labels([value])[value],
            }


class SessionOwnerFilter(OwnerFilter):
    prefix = "session__"


# --- conversations ----------------------------------------------------------------------------


def last_reply_status():
    return Subquery(Reply.objects.filter(conversation=OuterRef("pk")).order_by("-pk").values("status")[:1])


STATUS_ID_LIMIT = 5_000


def conversations_whose_last_reply(statuses) -> Q:
    """Conversations whose newest reply has one of `statuses` (the list annotates `last_status`).

    A rare status is found from its replies, through the status index and then each one's
    conversation (is there a later reply?), and handed to the list as primary keys, so the ordered
    walk over conversations only checks a short list. A common one (more than STATUS_ID_LIMIT such
    replies) is checked on each conversation the walk passes, by its `last_status` (one backward
    index probe), and the page fills after a few dozen. (A subquery with the "no later reply"
    check inside, or a list of 50,000 ids, took over a second at 500,000 conversations.)
    """
    with_status = Reply.objects.filter(status__in=statuses)
    if len(with_status.values_list("pk", flat=True)[: STATUS_ID_LIMIT + 1]) > STATUS_ID_LIMIT:
        return Q(last_status__in=statuses)  # common (read from the status index alone)
    later = Reply.objects.filter(conversation=OuterRef("conversation"), pk__gt=OuterRef("pk"))
    return Q(pk__in=list(with_status.exclude(Exists(later)).values_list("conversation_id", flat=True)))


class ConversationStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [
            ("busy", "Busy (a reply is streaming)"),
            ("stuck", "Stuck (left in progress)"),
            ("failed", "Last reply failed"),
            ("cut", "Last reply cut off"),
            ("ok", "OK"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        now = timezone.now()
        in_progress = Reply.objects.filter(status=Reply.Status.IN_PROGRESS).values("conversation_id")
        if value == "busy":
            return queryset.filter(pk__in=in_progress, session__locked_until__gt=now)
        if value == "stuck":
            return queryset.filter(pk__in=in_progress).exclude(session__locked_until__gt=now)
        if value == "failed":
            return queryset.filter(conversations_whose_last_reply([Reply.Status.FAILED]))
        if value == "cut":
            return queryset.filter(conversations_whose_last_reply(CUT_STATUSES))
        if value == "ok":
            return queryset.filter(last_status=Reply.Status.COMPLETED)
        return queryset


def conversations_with(rows) -> Q:
    """Conversations named by `rows` (a queryset of another table with a `conversation_id`).

    As a plain (uncorrelated) subquery, so PostgreSQL picks the plan by how common the value is:
    for a rare one it reads the few rows through their index and fetches those conversations; for a
    common one it walks the conversations in the list's order, one index probe each, and stops
    when the page is full. (Handing it the ids as a list of parameters instead took over a second
    with 25,000 of them: PostgreSQL compares each conversation with the list one by one.)
    """
    return Q(pk__in=rows.values("conversation_id"))


class RatingFilter(admin.SimpleListFilter):
    """Conversations with an answer rated down, or up (docs/api.md §15)."""

    title = "rating"
    parameter_name = "rating"

    def lookups(self, request, model_admin):
        return [("down", "Has a thumbs-down"), ("up", "Has a thumbs-up"), ("any", "Has any rating")]

    def queryset(self, request, queryset):
        value = self.value()
        if value in Feedback.Rating.values:
            return queryset.filter(conversations_with(Feedback.objects.filter(rating=value)))
        if value == "any":
            return queryset.filter(conversations_with(Feedback.objects.all()))
        return queryset


REPLY_ENDED_LABELS = {
    Reply.Status.COMPLETED: "completed",
    Reply.Status.FAILED: "failed (an upstream error)",
    Reply.Status.CANCELLED: "cancelled",
    Reply.Status.INTERRUPTED: "interrupted (its worker died)",
    Reply.Status.REQUIRES_ACTION: "waiting for tool outputs (requires_action)",
    Reply.Status.IN_PROGRESS: "still in progress",
}


class ReplyEndedFilter(admin.SimpleListFilter):
    """Conversations with at least one reply in each status of docs/api.md §6, whichever reply it was."""

    title = "has a reply that ended"
    parameter_name = "reply_status"

    def lookups(self, request, model_admin):
        return [(status, label) for status, label in REPLY_ENDED_LABELS.items()]

    def queryset(self, request, queryset):
        if self.value() in REPLY_ENDED_LABELS:
            return queryset.filter(conversations_with(Reply.objects.filter(status=self.value())))
        return queryset


STATUS_LABELS = {
    Reply.Status.COMPLETED: "ok",
    Reply.Status.FAILED: "failed last reply",
    Reply.Status.CANCELLED: "last reply cancelled",
    Reply.Status.INTERRUPTED: "last reply interrupted",
    Reply.Status.REQUIRES_ACTION: "waiting for tool outputs",
}


def conversation_status(conversation: Conversation) -> str:
    status = getattr(conversation, "last_status", None)
    if status is None:
        return "no replies"
    if status == Reply.Status.IN_PROGRESS:
        locked_until = conversation.session.locked_until
        return "busy" if locked_until and locked_until > timezone.now() else "stuck (in progress)"
    return STATUS_LABELS.get(status, status)


SEARCH_ID_LIMIT = 3000


def search_conversations(queryset, term: str):
    """Exact session id, Coze conversation id or Coze user id, or words in a message.

    Each kind of match is looked up through its own index first. When they come to a few
    thousand rows at most (ids, rare words: the usual case) the list is filtered by those
    primary keys. A word found in more messages than that is common: then each conversation the
    list walks (newest first) is checked for it, and the page fills after a few hundred.
    """
    term = term.strip()
    if not term:
        return queryset
    ids = set(Conversation.objects.filter(coze_conversation_id=term).values_list("pk", flat=True))
    sessions = ChatSession.objects.filter(Q(session_id=term) | Q(coze_user_id=term)).values("pk")
    ids.update(Conversation.objects.filter(session__in=sessions).values_list("pk", flat=True)[:SEARCH_ID_LIMIT])
    if len(term) >= MIN_TEXT_SEARCH:
        with_text = Message.objects.filter(content__icontains=term)
        found = list(with_text.values_list("conversation_id", flat=True)[: SEARCH_ID_LIMIT + 1])
        if len(found) > SEARCH_ID_LIMIT:
            in_conversation = with_text.filter(conversation=OuterRef("pk"))
            return queryset.filter(Q(pk__in=sorted(ids)) | Exists(in_conversation))
        ids.update(found)
    return queryset.filter(pk__in=sorted(ids))


@admin.register(Conversation)
class ConversationAdmin(PricedFieldsMixin, BigTableAdmin):
    # Narrow enough for a 1,280 px screen beside the filters, as the token usage list: long ids
    # are cut with an ellipsis and shown whole on hover; numbers and times never wrap.
    list_display = [
        "conversation",
        "session_id_column",
        "owner",
        "user_column",
        "bot",
        "messages",
        "tokens",
        "last_active",
        "status",
    ]
    list_display_links = ["conversation"]
    list_select_related = ["session", "session__api_client", "session__user"]
    list_filter = [
        BotFilter,
        SessionOwnerFilter,
        ConversationStatusFilter,
        RatingFilter,
        ReplyEndedFilter,
        ("last_activity", admin.DateFieldListFilter),
    ]
    ordering = ["-last_activity"]
    sortable_by = ["last_active", "messages", "tokens"]
    search_fields = ["session__session_id"]  # shows the search box; `get_search_results` does the work
    search_help_text = (
        "Exact session id, Coze conversation id or Coze user id; or text in a message "
        f"(at least {MIN_TEXT_SEARCH} characters, case-insensitive)."
    )
    fields = [
        "session_link",
        "owner",
        "coze_user_id",
        "bot_id",
        "coze_conversation_id",
        "created_at",
        "last_activity",
        "message_count",
        "total_tokens",
        "cost",
        "status",
    ]
    readonly_fields = fields

    actions = ["export_jsonl"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(last_status=last_reply_status())

    def get_search_results(self, request, queryset, search_term):
        return search_conversations(queryset, search_term), False

    @admin.action(description="Export selected conversations (JSON Lines)", permissions=["view"])
    def export_jsonl(self, request, queryset):
        # Streamed: a page of conversations, and a page of their messages and replies, at a time.
        return export.export_response(request, Conversation.objects.filter(pk__in=queryset.values("pk")))

    @admin.display(description="conversation")
    def conversation(self, obj: Conversation):
        return cut_text(obj.coze_conversation_id or f"#{obj.pk} (no Coze id yet)")

    @admin.display(description="session")
    def session_id_column(self, obj: Conversation):
        return cut_text(obj.session.session_id)

    @admin.display(description="user")
    def user_column(self, obj: Conversation):
        return cut_text(obj.session.coze_user_id)

    @admin.display(description="bot")
    def bot(self, obj: Conversation):
        return cut_text(obj.bot_id)

    @admin.display(description="messages", ordering="message_count")
    def messages(self, obj: Conversation) -> str:
        return f"{obj.message_count:,}"

    @admin.display(description="tokens", ordering="total_tokens")
    def tokens(self, obj: Conversation) -> str:
        return f"{obj.total_tokens:,}"

    @admin.display(description="last activity", ordering="last_activity")
    def last_active(self, obj: Conversation):
        return short_time(obj.last_activity)

    @admin.display(description="session")
    def session_link(self, obj: Conversation):
        url = reverse("admin:sessions_admin_chatsession_change", args=[obj.session_id])
        return format_html('<a href="{}">{}</a>', url, obj.session.session_id)

    @admin.display(description="owner")
    def owner(self, obj: Conversation):
        session = obj.session
        label = owner_label(session.owner_key, session.api_client, session.user)
        return owner_link(reverse("admin:sessions_admin_conversation_changelist"), session.owner_key, label, cut=True)

    @admin.display(description="Coze user id")
    def coze_user_id(self, obj: Conversation) -> str:
        return obj.session.coze_user_id

    @admin.display(description="estimated cost")
    def cost(self, obj: Conversation) -> str:
        tokens = Reply.objects.filter(conversation=obj).aggregate(
            input=Sum("input_tokens", default=0), output=Sum("output_tokens", default=0)
        )
        return cost_text(tokens["input"], tokens["output"])

    @admin.display(description="status")
    def status(self, obj: Conversation) -> str:
        return conversation_status(obj)

    def changelist_view(self, request, extra_context=None):
        intro = (
            "One row per Coze conversation. A chat session (the session_id a client sends) has one or more: "
            "clearing a session starts a new conversation, and the old one stays here for review. Open one for "
            "its transcript and ratings; filter by rating or by how its replies ended."
        )
        return super().changelist_view(request, extra_context={"intro": intro, **(extra_context or {})})

    def get_fieldsets(self, request, obj=None):
        # Collapsed: the transcript, right under the page's summary line, is what staff come for.
        return [("All fields", {"fields": self.get_fields(request, obj), "classes": ["collapse"]})]

    def get_object(self, request, object_id, from_field=None):
        queryset = self.get_queryset(request).select_related(*self.list_select_related)
        try:
            return queryset.get(pk=int(object_id))
        except (ValueError, Conversation.DoesNotExist):
            return None

    def change_view(self, request, object_id, form_url="", extra_context=None):
        conversation = self.get_object(request, object_id)
        extra_context = extra_context or {}
        if conversation is not None and self.has_view_permission(request, conversation):
            extra_context["transcript"] = transcript(conversation, page=request.GET.get("page"))
            session = conversation.session
            extra_context["owner_label"] = owner_label(session.owner_key, session.api_client, session.user)
            # Off by default: a thumbnail makes the operator's browser fetch the user's link.
            extra_context["image_thumbnails"] = settings.CHAT_ADMIN_IMAGE_THUMBNAILS
        return super().change_view(request, object_id, form_url, extra_context)


def transcript(conversation: Conversation, *, page) -> dict:
    """One page of a conversation as turns: the user's message, the answer (with its rating),
    follow-ups, and the reply's record; and the conversation's ratings, counted."""
    replies = Reply.objects.filter(conversation=conversation).order_by("pk")
    paginator = Paginator(replies, TRANSCRIPT_TURNS_PER_PAGE)
    page_obj = paginator.get_page(page)
    page_replies = list(page_obj.object_list)
    by_reply = {reply.pk: {"reply": reply, "questions": [], "answers": [], "follow_ups": []} for reply in page_replies}
    messages = list(Message.objects.filter(reply_id__in=list(by_reply)).select_related("feedback").order_by("pk"))
    for message in messages:
        turn = by_reply[message.reply_id]
        if message.role == Message.Role.USER:
            turn["questions"].append(message)
        elif message.kind == Message.Kind.FOLLOW_UP:
            turn["follow_ups"].append(message)
        else:
            turn["answers"].append(message)
            message.rating = getattr(message, "feedback", None)
    turns = []
    for reply in page_replies:
        turn = by_reply[reply.pk]
        turn["outcome"] = reply_outcome(reply)
        turns.append(turn)
    loose = []
    if not page_obj.has_next():
        # Messages not tied to a reply (none are written today); shown so nothing is hidden.
        loose = list(Message.objects.filter(conversation=conversation, reply__isnull=True).order_by("pk"))
    ratings = dict(
        Feedback.objects.filter(conversation=conversation).values_list("rating").annotate(count=Count("pk")).order_by()
    )
    return {
        "turns": turns,
        "page": page_obj,
        "loose_messages": loose,
        "reply_count": paginator.count,
        "ratings": {"up": ratings.get(Feedback.Rating.UP, 0), "down": ratings.get(Feedback.Rating.DOWN, 0)},
    }


def reply_outcome(reply: Reply) -> dict:
    """How a reply ended, for the transcript: a short label and whether it is a problem."""
    if reply.status == Reply.Status.COMPLETED:
        return {"label": "completed", "problem": False}
    if reply.status == Reply.Status.IN_PROGRESS:
        return {"label": "in progress", "problem": False}
    if reply.status == Reply.Status.REQUIRES_ACTION:
        return {"label": "waiting for tool outputs", "problem": False}
    label = {
        Reply.Status.FAILED: "failed",
        Reply.Status.CANCELLED: "cut off: cancelled",
        Reply.Status.INTERRUPTED: "cut off: interrupted",
    }.get(reply.status, reply.status)
    if reply.error_code:
        label = f"{label} ({reply.error_code})"
    return {"label": label, "problem": True, "detail": reply.error_detail}


# --- sessions ---------------------------------------------------------------------------------


class SessionBusyFilter(admin.SimpleListFilter):
    title = "lock"
    parameter_name = "lock"

    def lookups(self, request, model_admin):
        return [("busy", "Busy (a reply holds the lock)"), ("free", "Free")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "busy":
            return queryset.filter(locked_until__gt=now)
        if self.value() == "free":
            return queryset.exclude(locked_until__gt=now)
        return queryset


class SessionBotFilter(BotFilter):
    pass


@admin.register(ChatSession)
class ChatSessionAdmin(PricedFieldsMixin, BigTableAdmin):
    list_display = [
        "session",
        "owner",
        "user_column",
        "bot",
        "messages",
        "tokens",
        "last_active",
        "lock_status",
    ]
    list_display_links = ["session"]
    list_select_related = ["api_client", "user"]
    list_filter = [SessionBotFilter, OwnerFilter, SessionBusyFilter, ("last_activity", admin.DateFieldListFilter)]
    ordering = ["-last_activity"]
    sortable_by = ["last_active"]
    search_fields = ["session_id"]
    search_help_text = "Exact session id or Coze user id."
    fields = [
        "session_id",
        "owner",
        "coze_user_id",
        "bot_id",
        "created_at",
        "last_activity",
        "cleared_at",
        "message_count",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cost",
        "lock_status",
        "conversation_links",
    ]
    readonly_fields = fields

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(session_id=term) | Q(coze_user_id=term)), False

    def changelist_view(self, request, extra_context=None):
        intro = (
            "One row per session: the session_id a client sends, scoped to its owner (two owners may both use "
            '"s1"). Its messages are those of its current conversation; a cleared session starts a new '
            "conversation, and its page links them all."
        )
        return super().changelist_view(request, extra_context={"intro": intro, **(extra_context or {})})

    @admin.display(description="owner")
    def owner(self, obj: ChatSession):
        label = owner_label(obj.owner_key, obj.api_client, obj.user)
        return owner_link(reverse("admin:sessions_admin_chatsession_changelist"), obj.owner_key, label, cut=True)

    @admin.display(description="session id")
    def session(self, obj: ChatSession):
        return cut_text(obj.session_id)

    @admin.display(description="user")
    def user_column(self, obj: ChatSession):
        return cut_text(obj.coze_user_id)

    @admin.display(description="bot")
    def bot(self, obj: ChatSession):
        return cut_text(obj.bot_id)

    @admin.display(description="messages")
    def messages(self, obj: ChatSession):
        # Of the current conversation (the session API's message_count); cleared ones are not counted.
        return format_html('<span title="in its current conversation">{}</span>', f"{obj.message_count:,}")

    @admin.display(description="tokens")
    def tokens(self, obj: ChatSession) -> str:
        return f"{obj.total_tokens:,}"

    @admin.display(description="last activity", ordering="last_activity")
    def last_active(self, obj: ChatSession):
        return short_time(obj.last_activity)

    @admin.display(description="status")
    def lock_status(self, obj: ChatSession) -> str:
        return obj.status

    @admin.display(description="estimated cost")
    def cost(self, obj: ChatSession) -> str:
        return cost_text(obj.input_tokens, obj.output_tokens)

    @admin.display(description="conversations")
    def conversation_links(self, obj: ChatSession):
        conversations = list(obj.conversations.order_by("-last_activity")[:50])
        if not conversations:
            return "none"
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a> · {} · {} tokens · last activity {}{}</li>',
            (
                (
                    reverse("admin:sessions_admin_conversation_change", args=[conversation.pk]),
                    conversation.coze_conversation_id or f"#{conversation.pk}",
                    plural(conversation.message_count, "message"),
                    f"{conversation.total_tokens:,}",
                    conversation.last_activity.strftime("%Y-%m-%d %H:%M"),
                    " (current)" if conversation.pk == obj.current_conversation_id else "",
                )
                for conversation in conversations
            ),
        )
        return format_html("<ul>{}</ul>", rows)


# --- token usage ------------------------------------------------------------------------------


class ReplyBotFilter(BotFilter):
    pass


@admin.register(Reply)
class ReplyAdmin(PricedFieldsMixin, BigTableAdmin):
    """Token usage: one row per reply, with totals for the current filter, CSV export and the dashboard."""

    # Narrow enough for a 1,280 px screen beside the filters: one tokens column (total, with input
    # and output under it), short headers, long ids cut with an ellipsis and shown whole on hover.
    # The Coze chat id is on each reply's page and in the CSV export, and the search finds it.
    list_display = [
        "started",
        "session_link",
        "bot",
        "owner",
        "status",
        "transport",
        "tokens",
        "first_token",
        "duration",
    ]
    list_display_links = ["started"]
    list_select_related = ["session", "api_client", "user"]
    list_filter = [
        "status",
        "transport",
        "resumable",
        ReplyBotFilter,
        OwnerFilter,
        ("started_at", admin.DateFieldListFilter),
    ]
    ordering = ["-started_at"]
    sortable_by = ["started", "tokens", "first_token", "duration"]
    search_fields = ["coze_chat_id"]
    search_help_text = "Exact Coze chat id or session id."
    fields = [
        "coze_chat_id",
        "coze_logid",
        "conversation_link",
        "session_link",
        "owner",
        "bot_id",
        "status",
        "error_code",
        "error_detail",
        "required_action",  # local tool calls and their outputs (Coze's API), as stored
        "transport",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cost",
        "time_to_first_token_ms",
        "duration_ms",
        "started_at",
        "finished_at",
        "resumable_end",
        "resume_count",
    ]
    readonly_fields = fields

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(coze_chat_id=term) | Q(session__session_id=term)), False

    @admin.display(description="started", ordering="started_at")
    def started(self, obj: Reply):
        started_at = timezone.localtime(obj.started_at)
        return format_html(
            '<time datetime="{}" title="{}">{}</time>',
            started_at.isoformat(),
            started_at.strftime("%Y-%m-%d %H:%M:%S %Z"),
            started_at.strftime("%b %d %H:%M"),
        )

    @admin.display(description="session", ordering=None)
    def session_link(self, obj: Reply):
        url = reverse("admin:sessions_admin_conversation_change", args=[obj.conversation_id])
        session_id = obj.session.session_id
        return format_html('<a class="cut" href="{}" title="{} (transcript)">{}</a>', url, session_id, session_id)

    @admin.display(description="bot")
    def bot(self, obj: Reply):
        return cut_text(obj.bot_id)

    @admin.display(description="tokens", ordering="total_tokens")
    def tokens(self, obj: Reply):
        return format_html(
            '{}<span class="tokens-split" title="input · output tokens">{} · {}</span>',
            f"{obj.total_tokens:,}",
            f"{obj.input_tokens:,}",
            f"{obj.output_tokens:,}",
        )

    @admin.display(description="first token", ordering="time_to_first_token_ms")
    def first_token(self, obj: Reply):
        return milliseconds_text(obj.time_to_first_token_ms)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: Reply):
        return milliseconds_text(obj.duration_ms)

    @admin.display(description="conversation")
    def conversation_link(self, obj: Reply):
        url = reverse("admin:sessions_admin_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">transcript</a>', url)

    @admin.display(description="owner")
    def owner(self, obj: Reply):
        label = owner_label(obj.owner_key, obj.api_client, obj.user)
        return owner_link(reverse("admin:sessions_admin_reply_changelist"), obj.owner_key, label, cut=True)

    @admin.display(description="estimated cost")
    def cost(self, obj: Reply) -> str:
        return cost_text(obj.input_tokens, obj.output_tokens)

    @admin.display(description="resumable")
    def resumable_end(self, obj: Reply) -> str:
        """How a resumable reply ended: with its client reading, or after it had gone (ran on alone)."""
        if obj.status == Reply.Status.IN_PROGRESS:
            return "in progress"
        if not obj.resumable:
            return "no"
        if obj.ended_without_client:
            return f"yes: ran on after its client left, then {obj.get_status_display().lower()}"
        return f"yes: {obj.get_status_display().lower()} with its client reading"

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="sessions_admin_reply_dashboard"),
            path("export.csv", self.admin_site.admin_view(self.export_view), name="sessions_admin_reply_export"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        intro = (
            "One row per reply stored now, with its tokens and timing. Replies deleted with their conversations "
            "(clear_chat_sessions, prune_chat_data, the session API) are no longer here, so these totals can be "
            "lower than the usage dashboard's: the dashboard reads the daily usage totals, which keep them."
        )
        context = {"title": "Replies: token usage per reply", "intro": intro, "no_price_note": NO_PRICE_NOTE}
        response = super().changelist_view(request, extra_context={**context, **(extra_context or {})})
        context = getattr(response, "context_data", None) or {}
        changelist = context.get("cl")
        if changelist is not None:
            context["usage_totals"] = usage_totals(changelist.queryset)
            query = changelist.get_query_string(remove=[PAGE_VAR])
            context["export_url"] = reverse("admin:sessions_admin_reply_export") + query
            context["dashboard_url"] = reverse("admin:sessions_admin_reply_dashboard")
        return response

    def export_view(self, request: HttpRequest):
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Unknown filter in the query string.")
        return csv_export.usage_csv_response(request, changelist.queryset)

    def dashboard_view(self, request: HttpRequest):
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            days = int(request.GET.get("days", 30))
        except ValueError:
            days = 30
        if days not in DASHBOARD_DAYS:
            days = 30
        key = f"sessions_admin:dashboard:{days}"
        board = None if request.GET.get("refresh") else cache.get(key)
        if board is None:
            board = usage_dashboard(days=days)
            board.extra["computed_at"] = timezone.now()
            cache.set(key, board, DASHBOARD_CACHE_SECONDS)
        changelist = reverse("admin:sessions_admin_reply_changelist")
        charts = dashboard_charts(board)
        charts["owners"] = horizontal_bar_chart(
            [(entry.label, entry.tokens, f"{changelist}?{entry.url_filter}") for entry in board.top_owners],
            title="Top owners by tokens",
        )
        charts["sessions"] = horizontal_bar_chart(
            [(entry.label, entry.tokens, f"{changelist}?{entry.url_filter}") for entry in board.top_sessions],
            title="Top sessions by tokens",
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage dashboard",
            "opts": self.model._meta,
            "board": board,
            "charts": charts,
            "days_choices": DASHBOARD_DAYS,
            "days": days,
            "cost": board.cost,
            "error_rate_percent": board.error_rate * 100,
            "down_share_percent": board.down_share * 100,
            "no_price_note": NO_PRICE_NOTE,
            "tokens_compact": compact(board.tokens),
            "cache_seconds": DASHBOARD_CACHE_SECONDS,
            "changelist_url": changelist,
            # Not cached with the board: staff watching a budget need the current figure.
            "client_budgets": [
                {
                    "name": row.name,
                    "url": reverse("admin:sessions_admin_apiclient_change", args=[row.client_pk]),
                    "today": mark_safe(budget_bar(row.today_tokens, row.daily_budget)),  # noqa: S308 (escaped there)
                    "month": mark_safe(budget_bar(row.month_tokens, row.monthly_budget)),  # noqa: S308
                }
                for row in client_budgets()
            ],
        }
        return TemplateResponse(request, "admin/sessions_admin/dashboard.html", context)


def usage_totals(queryset) -> dict:
    """Sums for the replies a filtered changelist shows (all pages)."""
    totals = queryset.order_by().aggregate(
        replies=Count("*"),
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        total_tokens=Sum("total_tokens"),
        errors=Count("started_at", filter=Q(status__in=ERROR_STATUSES)),
        ttft_avg_ms=Avg("time_to_first_token_ms"),
    )
    for name in ("input_tokens", "output_tokens", "total_tokens"):
        totals[name] = totals[name] or 0
    totals["cost"] = token_cost(totals["input_tokens"], totals["output_tokens"])
    totals["error_rate"] = totals["errors"] / totals["replies"] if totals["replies"] else 0
    return totals


# --- API clients ------------------------------------------------------------------------------


@admin.register(ChatFile)
class ChatFileAdmin(BigTableAdmin):
    """Files uploaded for chat attachments (the files themselves are at Coze)."""

    list_display = ["file_name", "content_type", "size", "owner", "coze_file_id", "uploaded_at"]
    list_select_related = ["api_client", "user"]
    search_fields = ["=coze_file_id", "file_name"]
    ordering = ["-uploaded_at"]
    fields = [
        "file_name",
        "content_type",
        "bytes",
        "owner_key",
        "api_client",
        "user",
        "coze_user_id",
        "coze_file_id",
        "uploaded_at",
    ]
    readonly_fields = fields

    @admin.display(description="size", ordering="bytes")
    def size(self, obj: ChatFile) -> str:
        return filesizeformat(obj.bytes)

    @admin.display(description="owner")
    def owner(self, obj: ChatFile) -> str:
        return owner_label(obj.owner_key, obj.api_client, obj.user)


def alert_delivery(alert: BudgetAlert) -> str:
    if alert.delivered_at is None and not alert.attempts and not settings.CHAT_BUDGET_ALERT_WEBHOOK:
        return "recorded (no CHAT_BUDGET_ALERT_WEBHOOK set)"
    if alert.delivered_at is not None:
        return f"delivered {timezone.localtime(alert.delivered_at):%Y-%m-%d %H:%M:%S} (attempt {alert.attempts})"
    if alert.attempts:
        # Masked again here for errors stored before the webhook was masked in them.
        return f"not delivered after {plural(alert.attempts, 'attempt')}: {mask_webhook_in(alert.last_error)}"
    return "sending"


def client_spend(period_start_field: str):
    """An ApiClient annotation: the client's tokens from the DailyUsage rollup since a day."""
    return Subquery(
        DailyUsage.objects.filter(
            owner_key=Concat(Value("client:"), Cast(OuterRef("pk"), output_field=CharField())),
            day__gte=period_start_field,
        )
        .order_by()
        .values("owner_key")
        .annotate(tokens=Sum("total_tokens"))
        .values("tokens")[:1]
    )


ALERTS_SHOWN = 20
LIMIT_FIELDS = [
    "rate_limit_per_minute",
    "max_concurrent_streams",
    "daily_token_budget",
    "monthly_token_budget",
    "allowed_bot_ids",
    "retention_days",
]


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    """Create, name, limit and deactivate API clients. A new client's key is shown once, on the page
    after creating it. Limit edits reach every worker within `chat.access.client_limits.LIMITS_CACHE_SECONDS`."""

    list_display = ["name", "key_prefix", "is_active", "budget_use", "created_at", "last_used_at", "sessions_link"]
    list_filter = ["is_active"]
    search_fields = ["name", "key_prefix"]
    ordering = ["name"]
    actions = ["deactivate", "activate"]

    def get_fieldsets(self, request, obj=None):
        limits_section = (
            "Limits, budgets and retention",
            {
                "fields": LIMIT_FIELDS,
                "description": "Leave a limit empty to use the server-wide default (retention: CHAT_RETENTION_DAYS).",
            },
        )
        if obj is None:
            return [(None, {"fields": ["name"]}), limits_section]
        return [
            (None, {"fields": ["name", "is_active"]}),
            ("Use (UTC)", {"fields": ["budget_use_detail", "alerts_sent"]}),
            limits_section,
            ("Key", {"fields": ["key_prefix", "created_at", "last_used_at"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["key_prefix", "created_at", "last_used_at", "budget_use_detail", "alerts_sent"]

    def get_queryset(self, request):
        from chat.access import budgets  # the budgets' clock

        today = budgets.now().date()
        return (
            super()
            .get_queryset(request)
            .annotate(today_tokens=client_spend(today), month_tokens=client_spend(today.replace(day=1)))
        )

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting a client would delete every session and reply it owns; deactivate it instead.
        return False

    @admin.display(description="use today / this month")
    def budget_use(self, obj: ApiClient):
        today, month = obj.today_tokens or 0, obj.month_tokens or 0
        return format_html(
            "{}<br>{}",
            mark_safe(budget_bar(today, obj.daily_token_budget)),  # noqa: S308 (escaped by budget_bar)
            mark_safe(budget_bar(month, obj.monthly_token_budget)),  # noqa: S308
        )

    @admin.display(description="tokens used")
    def budget_use_detail(self, obj: ApiClient):
        from chat.access import budgets

        at = budgets.now()
        spend = budgets.spend_of(obj.owner_key, at)
        return format_html(
            "Today: {} (resets {} UTC)<br>This month: {} (resets {} UTC)",
            mark_safe(budget_bar(spend.today_tokens, obj.daily_token_budget)),  # noqa: S308
            f"{budgets.day_reset(at):%Y-%m-%d %H:%M}",
            mark_safe(budget_bar(spend.month_tokens, obj.monthly_token_budget)),  # noqa: S308
            f"{budgets.month_reset(at):%Y-%m-%d %H:%M}",
        )

    @admin.display(description="budget alerts sent")
    def alerts_sent(self, obj: ApiClient):
        # Shown, not an inline formset: the records are read-only, and a formset would make every
        # save of this form need its management fields.
        alerts = list(obj.budget_alerts.order_by("-created_at")[:ALERTS_SHOWN])
        if not alerts:
            return "None yet."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{} from {}</td><td>{}%</td><td>{} of {}</td><td>{}</td></tr>",
            (
                (
                    f"{timezone.localtime(alert.created_at):%Y-%m-%d %H:%M}",
                    alert.period,
                    alert.period_start,
                    alert.threshold,
                    f"{alert.used:,}",
                    f"{alert.limit:,}",
                    alert_delivery(alert),
                )
                for alert in alerts
            ),
        )
        link = reverse("admin:sessions_admin_budgetalert_changelist") + "?" + urlencode({"api_client": obj.pk})
        return format_html(
            '<table class="budget-alerts"><thead><tr><th>when</th><th>period</th><th>threshold</th><th>tokens</th>'
            '<th>delivery</th></tr></thead><tbody>{}</tbody></table><a href="{}">all alerts of this client</a>',
            rows,
            link,
        )

    @admin.display(description="sessions")
    def sessions_link(self, obj: ApiClient):
        url = reverse("admin:sessions_admin_chatsession_changelist")
        return format_html('<a href="{}?{}">sessions</a>', url, urlencode({"owner": obj.owner_key}))

    @admin.action(description="Deactivate selected clients (their keys stop working)", permissions=["change"])
    def deactivate(self, request, queryset):
        count = queryset.update(is_active=False)
        self.message_user(request, f"Deactivated {plural(count, 'client')}.", messages.SUCCESS)

    @admin.action(description="Reactivate selected clients", permissions=["change"])
    def activate(self, request, queryset):
        count = queryset.update(is_active=True)
        self.message_user(request, f"Reactivated {plural(count, 'client')}.", messages.SUCCESS)

    def save_model(self, request, obj: ApiClient, form, change):
        if not change:
            # Same shape as ApiClient.create_with_key: only the hash is stored.
            raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
            obj.key_prefix, obj.key_hash = raw_key[:10], hash_api_key(raw_key)
            request._new_api_key = raw_key
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        raw_key = getattr(request, "_new_api_key", None)
        if raw_key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "opts": self.model._meta,
            "client": obj,
            "raw_key": raw_key,
            "change_url": reverse("admin:sessions_admin_apiclient_change", args=[obj.pk]),
        }
        response = TemplateResponse(request, "admin/sessions_admin/apiclient/key_created.html", context)
        # The key is in this page only: keep it out of caches and history snapshots.
        response["Cache-Control"] = "no-store"
        return response


@admin.register(BudgetAlert)
class BudgetAlertAdmin(BigTableAdmin):
    """Budget alerts: each threshold a client crossed, and whether the webhook got it."""

    list_display = ["created_at", "api_client", "period", "period_start", "threshold", "used", "limit", "delivery"]
    exclude = ["last_error"]  # shown masked, in `delivery`
    readonly_fields = ["delivery"]
    list_filter = ["period", "threshold", "api_client"]
    list_select_related = ["api_client"]
    ordering = ["-created_at"]

    @admin.display(description="delivery")
    def delivery(self, obj: BudgetAlert) -> str:
        return alert_delivery(obj)


class ForwardStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("pending", "Pending"), ("given_up", "Given up"), ("done", "Sent")]

    def queryset(self, request, queryset):
        from sessions_admin.feedback import MAX_FORWARD_ATTEMPTS

        if self.value() == "pending":
            return queryset.filter(done=False, attempts__lt=MAX_FORWARD_ATTEMPTS)
        if self.value() == "given_up":
            return queryset.filter(done=False, attempts__gte=MAX_FORWARD_ATTEMPTS)
        if self.value() == "done":
            return queryset.filter(done=True)
        return queryset


@admin.register(FeedbackForward)
class FeedbackForwardAdmin(BigTableAdmin):
    """Ratings on their way to Coze's feedback API (the outbox of sessions_admin.feedback)."""

    list_display = ["updated_at", "action", "coze_message_id", "state", "attempts", "next_attempt_at", "last_error"]
    list_filter = [ForwardStateFilter, "action"]
    ordering = ["-updated_at"]
    search_fields = ["=coze_message_id", "=coze_conversation_id"]
    search_help_text = "Exact Coze message or conversation id."

    @admin.display(description="state")
    def state(self, obj: FeedbackForward) -> str:
        from sessions_admin.feedback import MAX_FORWARD_ATTEMPTS

        if obj.done:
            return "sent"
        return "given up" if obj.attempts >= MAX_FORWARD_ATTEMPTS else "pending"
