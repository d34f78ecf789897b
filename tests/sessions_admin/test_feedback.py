"""Ratings of answers and the outbox that forwards them to Coze (sessions_admin.feedback), on Postgres."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from chat.domain.errors import ChatError
from sessions_admin import feedback as fb
from sessions_admin.models import Feedback, FeedbackForward, Message
from tests.sessions_admin.factories import make_chat, make_client, make_conversation, make_session, make_turn

pytestmark = pytest.mark.django_db


def answer_of(reply) -> Message:
    return reply.messages.get(kind=Message.Kind.ANSWER)


@pytest.fixture
def chat():
    client = make_client("mobile")
    session, conversation, replies = make_chat(client=client, turns=2)
    return client, session, conversation, replies


def test_an_answer_is_rated_and_a_second_rating_replaces_the_first(chat):
    client, _, conversation, replies = chat
    answer = answer_of(replies[0])

    first = fb.feedback_set(owner_key=client.owner_key, message_id=answer.pk, rating="up", comment="clear")
    assert (first.rating, first.comment, first.conversation_id) == ("up", "clear", conversation.pk)
    assert first.answered_at == answer.created_at
    second = fb.feedback_set(owner_key=client.owner_key, message_id=str(answer.pk), rating="down", comment="")

    assert Feedback.objects.count() == 1
    assert (second.pk, second.rating, second.comment) == (first.pk, "down", "")
    assert second.created_at == first.created_at and second.updated_at > first.updated_at


def test_another_owners_or_an_unknown_message_is_not_found(chat):
    client, _, _, replies = chat
    answer = answer_of(replies[0])
    stranger = make_client("stranger")
    for owner_key, message_id in [
        (stranger.owner_key, answer.pk),
        ("browser:" + "a" * 32, answer.pk),
        (client.owner_key, answer.pk + 1000),
        (client.owner_key, "not-a-number"),
        (client.owner_key, None),
    ]:
        for call in (
            lambda o=owner_key, m=message_id: fb.feedback_set(owner_key=o, message_id=m, rating="up"),
            lambda o=owner_key, m=message_id: fb.feedback_clear(owner_key=o, message_id=m),
        ):
            with pytest.raises(ChatError) as caught:
                call()
            assert caught.value.code == "not_found" and caught.value.status == 404
    assert not Feedback.objects.exists()


def test_a_question_or_a_suggestion_cannot_be_rated(chat):
    client, _, conversation, _ = chat
    reply = make_turn(conversation, follow_ups=("and then?",))
    for kind in (Message.Kind.QUESTION, Message.Kind.FOLLOW_UP):
        message = reply.messages.get(kind=kind)
        with pytest.raises(ChatError) as caught:
            fb.feedback_set(owner_key=client.owner_key, message_id=message.pk, rating="down")
        assert caught.value.code == "invalid" and caught.value.status == 400
    assert not Feedback.objects.exists()


@pytest.mark.parametrize(
    ("rating", "comment", "field"),
    [
        ("meh", "", "rating"),
        (None, "", "rating"),
        ("UP", "", "rating"),
        ("up", 5, "comment"),
        ("up", "x" * (fb.MAX_COMMENT_CHARS + 1), "comment"),
        ("up", "nul\x00byte", "comment"),
    ],
)
def test_a_bad_rating_or_comment_is_invalid_and_names_its_field(chat, rating, comment, field):
    client, _, _, replies = chat
    with pytest.raises(ChatError) as caught:
        fb.feedback_set(owner_key=client.owner_key, message_id=answer_of(replies[0]).pk, rating=rating, comment=comment)
    assert caught.value.code == "invalid" and list(caught.value.errors) == [field]
    assert not Feedback.objects.exists() and not FeedbackForward.objects.exists()


def test_a_comment_is_stored_redacted_under_chat_redact_and_so_is_its_copy_for_coze(chat, settings):
    settings.CHAT_REDACT = frozenset({"emails", "phones"})
    client, _, _, replies = chat
    stored = fb.feedback_set(
        owner_key=client.owner_key,
        message_id=answer_of(replies[0]).pk,
        rating="down",
        comment="wrong, mail me at jo@example.com or +44 20 7946 0958",
    )
    assert stored.comment == "wrong, mail me at [email] or [phone]"
    assert FeedbackForward.objects.get().comment == "wrong, mail me at [email] or [phone]"


def test_the_longest_comment_allowed_is_kept_whole(chat):
    client, _, _, replies = chat
    comment = "y" * fb.MAX_COMMENT_CHARS
    stored = fb.feedback_set(
        owner_key=client.owner_key, message_id=answer_of(replies[0]).pk, rating="up", comment=comment
    )
    assert stored.comment == comment


def test_each_rating_is_queued_for_coze_with_the_ids_it_needs(chat):
    client, _, conversation, replies = chat
    answer = answer_of(replies[1])
    fb.feedback_set(owner_key=client.owner_key, message_id=answer.pk, rating="down", comment="wrong price")

    row = FeedbackForward.objects.get()
    assert (row.message_id, row.coze_conversation_id, row.coze_message_id) == (
        answer.pk,
        conversation.coze_conversation_id,
        answer.coze_message_id,
    )
    assert (row.action, row.comment, row.version, row.attempts, row.done) == ("unlike", "wrong price", 1, 0, False)
    [task] = fb.forward_claim()
    assert (
        task.path == f"/v1/conversations/{conversation.coze_conversation_id}/messages/{answer.coze_message_id}/feedback"
    )
    assert task.body == {"feedback_type": "unlike", "comment": "wrong price"}


def test_a_change_rewrites_the_one_outbox_row_and_bumps_its_version(chat):
    client, _, _, replies = chat
    answer = answer_of(replies[0])
    fb.feedback_set(owner_key=client.owner_key, message_id=answer.pk, rating="down", comment="no")
    FeedbackForward.objects.update(attempts=3, last_error="HTTP 502", done=True, done_at=timezone.now())
    fb.feedback_set(owner_key=client.owner_key, message_id=answer.pk, rating="up")

    row = FeedbackForward.objects.get()
    assert (row.action, row.comment, row.version, row.attempts, row.last_error, row.done, row.done_at) == (
        "like",
        "",
        2,
        0,
        "",
        False,
        None,
    )
    assert fb.forward_claim()[0].body == {"feedback_type": "like"}


def test_clearing_removes_the_rating_and_queues_a_delete_at_coze(chat):
    client, _, _, replies = chat
    answer = answer_of(replies[0])
    fb.feedback_set(owner_key=client.owner_key, message_id=answer.pk, rating="up")
    assert fb.feedback_clear(owner_key=client.owner_key, message_id=answer.pk) is True

    assert not Feedback.objects.exists()
    row = FeedbackForward.objects.get()
    assert (row.action, row.version, row.done) == ("delete", 2, False)
    [task] = fb.forward_claim()
    assert task.body is None and task.action == "delete"
    # Again: nothing to clear, not an error; the delete is queued once more (harmless, idempotent at Coze).
    assert fb.feedback_clear(owner_key=client.owner_key, message_id=answer.pk) is False


def test_clearing_an_answer_never_rated_queues_nothing(chat):
    client, _, _, replies = chat
    assert fb.feedback_clear(owner_key=client.owner_key, message_id=answer_of(replies[0]).pk) is False
    assert not FeedbackForward.objects.exists()


def test_an_answer_without_coze_ids_is_rated_but_not_forwarded(chat):
    client, _, _, replies = chat
    answer = answer_of(replies[0])
    Message.objects.filter(pk=answer.pk).update(coze_message_id="")
    fb.feedback_set(owner_key=client.owner_key, message_id=answer.pk, rating="down")
    assert Feedback.objects.filter(message=answer).exists()
    assert not FeedbackForward.objects.exists()


def test_the_rating_and_its_outbox_row_commit_together(chat, monkeypatch):
    client, _, _, replies = chat

    def broken(*args, **kwargs):
        raise RuntimeError("outbox write failed")

    monkeypatch.setattr(fb, "_enqueue", broken)
    with pytest.raises(RuntimeError):
        fb.feedback_set(owner_key=client.owner_key, message_id=answer_of(replies[0]).pk, rating="up")
    assert not Feedback.objects.exists()


def test_session_messages_come_with_their_ratings_in_one_query(chat, django_assert_num_queries):
    client, _, conversation, replies = chat
    fb.feedback_set(owner_key=client.owner_key, message_id=answer_of(replies[1]).pk, rating="down", comment="meh")
    with django_assert_num_queries(1):
        shown = [
            (message.kind, fb.message_feedback(message))
            for message in fb.messages_with_feedback(Message.objects.filter(conversation=conversation).order_by("pk"))
        ]
    assert shown == [
        ("question", None),
        ("answer", None),
        ("question", None),
        ("answer", {"rating": "down", "comment": "meh"}),
    ]


# --- the outbox's senders ------------------------------------------------------------------------


@pytest.fixture
def queued():
    """Three rated answers of one owner, each with a pending outbox row."""
    client = make_client()
    conversation = make_conversation(make_session(client=client))
    answers = [answer_of(make_turn(conversation)) for _ in range(3)]
    for answer in answers:
        fb.feedback_set(owner_key=client.owner_key, message_id=answer.pk, rating="up")
    return client, answers


def test_a_claim_takes_due_rows_once_until_it_lapses(queued):
    now = timezone.now()
    tasks = fb.forward_claim(now=now)
    assert len(tasks) == 3 and all(task.attempt == 1 for task in tasks)
    assert fb.forward_claim(now=now) == []
    # A sender that died: its claim lapses and another takes the rows again.
    assert len(fb.forward_claim(now=now + timedelta(seconds=fb.FORWARD_CLAIM_SECONDS + 1))) == 3


def test_a_limit_caps_one_claim(queued):
    assert len(fb.forward_claim(limit=2)) == 2
    assert len(fb.forward_claim(limit=2)) == 1


def test_done_marks_the_row_unless_the_rating_changed_meanwhile(queued):
    client, answers = queued
    tasks = {task.pk: task for task in fb.forward_claim()}
    changed = FeedbackForward.objects.get(message=answers[0])
    fb.feedback_set(owner_key=client.owner_key, message_id=answers[0].pk, rating="down", comment="on reflection")

    results = {pk: fb.forward_done(task) for pk, task in tasks.items()}
    assert results == {pk: pk != changed.pk for pk in tasks}
    pending = FeedbackForward.objects.get(pk=changed.pk)
    assert (pending.done, pending.action, pending.version) == (False, "unlike", 2)
    [again] = fb.forward_claim()  # due at once, in its new form
    assert (again.pk, again.version, again.body) == (
        changed.pk,
        2,
        {"feedback_type": "unlike", "comment": "on reflection"},
    )
    assert FeedbackForward.objects.filter(done=True).count() == 2


def test_failures_back_off_exponentially_and_give_up_after_the_last_attempt(queued):
    start = timezone.now()
    row = FeedbackForward.objects.order_by("pk").first()
    FeedbackForward.objects.exclude(pk=row.pk).update(done=True)
    now = start
    for attempt in range(1, fb.MAX_FORWARD_ATTEMPTS + 1):
        [task] = fb.forward_claim(now=now)
        assert task.attempt == attempt
        before = timezone.now()
        fb.forward_failed(task, f"HTTP 502 attempt {attempt}")
        row.refresh_from_db()
        assert row.attempts == attempt and row.last_error == f"HTTP 502 attempt {attempt}"
        assert row.next_attempt_at >= before + timedelta(seconds=fb.forward_retry_delay(attempt))
        now = row.next_attempt_at
    assert fb.forward_claim(now=now + timedelta(days=1)) == []
    assert [fb.forward_retry_delay(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert fb.forward_retry_delay(40) == fb.FORWARD_RETRY_MAX_SECONDS


@pytest.mark.django_db(transaction=True)
def test_a_sender_skips_rows_another_sender_holds_instead_of_waiting():
    client = make_client()
    conversation = make_conversation(make_session(client=client))
    answers = [answer_of(make_turn(conversation)) for _ in range(4)]
    for answer in answers:
        fb.feedback_set(owner_key=client.owner_key, message_id=answer.pk, rating="down")
    held = list(FeedbackForward.objects.order_by("pk").values_list("pk", flat=True)[:2])
    claimed, failures = [], []

    def other_sender():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '2s'")
            claimed.extend(task.pk for task in fb.forward_claim())
        except Exception as exc:  # surfaced below
            failures.append(exc)
        finally:
            connection.close()

    with transaction.atomic():
        list(FeedbackForward.objects.select_for_update().filter(pk__in=held))
        thread = threading.Thread(target=other_sender)
        thread.start()
        thread.join(timeout=10)
    assert not thread.is_alive() and not failures, failures
    assert sorted(claimed) == sorted(set(FeedbackForward.objects.values_list("pk", flat=True)) - set(held))


def test_against_coze_studio_ratings_are_kept_here_and_not_queued(chat, settings):
    client, _, _, replies = chat
    settings.COZE_PLATFORM = "studio"  # Studio has no feedback API
    fb.feedback_set(owner_key=client.owner_key, message_id=answer_of(replies[0]).pk, rating="down")
    assert Feedback.objects.exists() and not FeedbackForward.objects.exists()


def test_an_end_users_narrowing_reaches_only_that_users_answers(chat):
    client, session, _, replies = chat
    answer = answer_of(replies[0])
    with pytest.raises(ChatError) as caught:
        fb.feedback_set(
            owner_key=client.owner_key, coze_user_id=session.coze_user_id + "-other", message_id=answer.pk, rating="up"
        )
    assert caught.value.code == "not_found"
    fb.feedback_set(owner_key=client.owner_key, coze_user_id=session.coze_user_id, message_id=answer.pk, rating="up")
    assert Feedback.objects.get().rating == "up"


@pytest.mark.parametrize("message_id", [True, 1.0, "1.0", " 1", 0, -3, 2**63])
def test_a_message_id_that_is_not_a_whole_positive_number_is_not_found(chat, message_id):
    client, _, _, _ = chat
    with pytest.raises(ChatError) as caught:
        fb.feedback_set(owner_key=client.owner_key, message_id=message_id, rating="up")
    assert caught.value.code == "not_found"
