"""What the database thread pays for each call of an answer's life (`bench.db_cost`):
exact statement counts, and the behaviour the folded queries must keep."""

from datetime import UTC, timedelta

import pytest
from django.contrib.auth import HASH_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat import moderation, protocol
from chat.domain import quota, selectors, services
from chat.exceptions import Busy, RateLimited
from chat.models import Membership, Message, ModerationCase, TokenUsage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

State = ModerationCase.State
CLEAN = moderation.Verdict(flagged=False, categories=[], scores={"hate": 0.01}, model="m", raw={})


def session_of(user) -> SessionStore:
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return session


def frame_access(session, user, conversation_id):
    """What a socket's frame checks, with the auth hash its session signed in with."""
    return selectors.frame_access(
        session=session,
        session_hash=session.get(HASH_SESSION_KEY) if session is not None else None,
        conversation_id=conversation_id,
        user=user,
    )


def answer(conversation, text: str = "an answer", status: str = "complete") -> Message:
    prompt = Message.objects.create(conversation=conversation, role="user", content="q")
    return Message.objects.create(
        conversation=conversation, role="assistant", reply_to=prompt, content=text, status=status
    )


def submit(conversation, user, client_msg_id: str | None = None) -> services.Submitted:
    return services.prompt_submit(
        conversation_id=conversation.id,
        user=user,
        content="How long is a piece of string?",
        client_msg_id=client_msg_id,
        model="m",
    )


# ---- frame access -------------------------------------------------------------------


def test_a_members_frame_costs_one_statement(users, conversation, django_assert_num_queries):
    session = session_of(users["bob"])
    session.get(HASH_SESSION_KEY)  # the socket read it at connect
    with django_assert_num_queries(1):
        signed_in, membership = frame_access(session, users["bob"], conversation.id)
        assert membership.conversation.title == "t"  # loaded with it
    assert signed_in is True
    assert (membership.user_id, membership.role) == (users["bob"].pk, "member")


def field_values(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


def test_the_membership_read_by_hand_is_the_one_the_orm_reads(users, conversation):
    _, membership = frame_access(session_of(users["bob"]), users["bob"], conversation.id)
    orm = Membership.objects.select_related("conversation").get(pk=membership.pk)
    assert field_values(membership) == field_values(orm)
    assert field_values(membership.conversation) == field_values(orm.conversation)
    assert membership._state.adding is False


def test_frame_access_tells_an_ended_session_from_a_missing_membership(users, conversation):
    def access(session, user):
        return frame_access(session, user, conversation.id)

    bob, eve = session_of(users["bob"]), session_of(users["eve"])
    assert access(eve, users["eve"]) == (True, None)  # signed in, not a member
    assert access(None, users["bob"])[1].role == "member"
    bob.delete()
    eve.delete()
    assert access(bob, users["bob"]) == (False, None)  # a member, signed out
    assert access(eve, users["eve"]) == (False, None)
    users["bob"].is_active = False
    users["bob"].save()
    assert access(session_of(users["bob"]), users["bob"]) == (True, None)


def test_a_password_change_ends_every_session_signed_in_before_it(users, conversation):
    before = session_of(users["bob"])
    assert frame_access(before, users["bob"], conversation.id)[0] is True
    users["bob"].set_password("a new password")
    users["bob"].save()
    assert frame_access(before, users["bob"], conversation.id) == (False, None)
    after = session_of(users["bob"])  # signed in again, with the new password
    assert frame_access(after, users["bob"], conversation.id)[1].role == "member"


# ---- a prompt -----------------------------------------------------------------------


def test_a_prompt_costs_eight_statements(users, conversation, django_assert_num_queries):
    with django_assert_num_queries(8):
        submitted = submit(conversation, users["bob"], "c1")
    prompt, assistant = submitted.user_message, submitted.assistant_message
    assert submitted.created
    assert submitted.history == [{"role": "user", "content": "How long is a piece of string?"}]
    stored = {m.pk: m for m in Message.objects.filter(conversation=conversation)}
    assert stored[prompt.pk].author_id == users["bob"].pk
    assert stored[prompt.pk].client_msg_id == "c1"
    assert stored[assistant.pk].reply_to_id == prompt.pk
    assert stored[assistant.pk].status == Message.Status.STREAMING
    assert stored[assistant.pk].created_at > stored[prompt.pk].created_at
    assert TokenUsage.objects.get(message_id=assistant.pk).user_id == users["bob"].pk


def test_an_answer_stamped_in_its_prompts_microsecond_still_sorts_after_it(
    users, conversation, monkeypatch
):
    frozen = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: frozen)
    submitted = submit(conversation, users["bob"])
    rows = list(
        Message.objects.filter(conversation=conversation)
        .order_by("created_at")
        .values_list("pk", "created_at")
    )
    assert rows == [
        (submitted.user_message.pk, frozen),
        (submitted.assistant_message.pk, frozen + timedelta(microseconds=1)),
    ]


def test_the_rate_limit_comes_before_the_constraints_and_still_returns_a_retry(
    users, conversation, settings
):
    settings.PROMPTS_PER_MINUTE = 1
    first = submit(conversation, users["bob"], "a")
    again = submit(conversation, users["bob"], "a")  # over the limit, but a retry
    assert (again.created, again.user_message.pk) == (False, first.user_message.pk)
    assert again.assistant_message.pk == first.assistant_message.pk
    with pytest.raises(RateLimited):  # not Busy, although an answer is streaming
        submit(conversation, users["bob"], "b")
    settings.PROMPTS_PER_MINUTE = 10
    with pytest.raises(Busy):
        submit(conversation, users["bob"], "b")
    settings.PROMPTS_PER_MINUTE = 0
    with pytest.raises(RateLimited):
        submit(conversation, users["bob"], "c")
    assert Message.objects.count() == 2
    assert TokenUsage.objects.count() == 1


def test_a_regenerate_reads_the_rate_with_the_lock(users, conversation, django_assert_num_queries):
    first = submit(conversation, users["bob"])
    services.message_finish(
        message_id=first.assistant_message.pk, status="complete", content="x", seq=1, model="m"
    )
    # The old answer with its prompt, then BEGIN, lock and rate, INSERT, history, usage,
    # reservation, COMMIT.
    with django_assert_num_queries(8):
        again = services.regenerate_submit(
            conversation_id=conversation.id,
            user=users["bob"],
            message_id=str(first.assistant_message.pk),
            model="m",
        )
    assert again.assistant_message.reply_to_id == first.user_message.pk
    # The turns up to the prompt it answers again, not the answer it replaces.
    assert again.history == [{"role": "user", "content": "How long is a piece of string?"}]


def test_a_finished_answer_read_by_hand_is_the_one_the_orm_reads(
    users, conversation, django_assert_num_queries
):
    first = submit(conversation, users["bob"])
    # BEGIN, the answer, the reservation, COMMIT, then the answer read back.
    with django_assert_num_queries(5):
        message = services.message_finish(
            message_id=first.assistant_message.pk,
            status="failed",
            content="partial",
            seq=3,
            model="m",
            usage=(5, 3, 8),
            usage_estimated=True,
            error_code="upstream_error",
            error_detail="cut",
            error_retry_after=1.5,
            ttft_ms=12,
            duration_ms=300,
        )
    orm = Message.objects.select_related("author").get(pk=message.pk)
    assert field_values(message) == field_values(orm)
    assert (message.status, message.usage_estimated, message.redacted) == ("failed", True, False)
    assert message.reply_to_id == first.user_message.pk
    assert message.created_at.tzinfo is not None
    assert TokenUsage.objects.get(message_id=message.pk).used == 8
    # A prompt is a message with an author: its name comes with it.
    prompt = selectors.message_with_author(message_id=first.user_message.pk)
    assert prompt.author.username == "bob"
    assert field_values(prompt) == field_values(Message.objects.get(pk=prompt.pk))


def test_usage_counts_answers_running_since_any_day_and_the_spend_of_today(users):
    bob, today = users["bob"], timezone.now().astimezone(UTC).date()
    yesterday = today - timedelta(days=1)
    for user, day, reserved, used, settled in (
        (bob, yesterday, 100, None, False),  # still running: counts, spends nothing today
        (bob, yesterday, 100, 90, True),  # yesterday's
        (bob, today, 80, 30, True),  # spent 30
        (bob, today, 70, None, False),  # holds 70
        (bob, today, 5, None, False),
        (bob, today, 5, None, False),
        (users["alice"], today, 1000, None, False),
    ):
        TokenUsage.objects.create(user=user, day=day, reserved=reserved, used=used, settled=settled)
    assert quota._usage_now(user=bob) == (4, 30 + 70 + 5 + 5)
    assert quota._usage_now(user=users["eve"]) == (0, 0)


# ---- moderation ---------------------------------------------------------------------


def test_opening_and_claiming_a_case_costs_three_statements_then_two(
    conversation, django_assert_num_queries, settings
):
    message = answer(conversation, "some text")
    before = timezone.now()
    with django_assert_num_queries(3):
        case_id, text = moderation._open_and_claim(message_id=message.pk)
    after = timezone.now()
    case = ModerationCase.objects.get()
    assert (case.pk, text) == (case_id, "some text")
    assert (case.source, case.state, case.attempts) == ("auto", State.PENDING, 1)
    # Leased for the call's timeout and then some, from when it was claimed.
    lease = timedelta(seconds=settings.MODERATION_TIMEOUT_S + moderation.LEASE_EXTRA_S)
    assert before + lease <= case.next_attempt_at <= after + lease
    assert moderation._open_and_claim(message_id=message.pk) is None  # leased
    ModerationCase.objects.update(next_attempt_at=None)
    with django_assert_num_queries(2):
        assert moderation._open_and_claim(message_id=message.pk) == (case_id, "some text")
    assert ModerationCase.objects.get().attempts == 2
    assert (
        moderation._open_and_claim(message_id=answer(conversation, status="streaming").pk) is None
    )
    assert moderation._open_and_claim(message_id=answer(conversation, "").pk) is None


def test_a_case_another_worker_created_meanwhile_is_the_one_used(conversation):
    message = answer(conversation)
    theirs = ModerationCase.objects.create(message=message, source="auto")
    assert moderation._create_auto_case(message_id=message.pk) == theirs.pk
    with transaction.atomic():  # inside a transaction, the failed insert has a savepoint
        assert moderation._create_auto_case(message_id=message.pk) == theirs.pk
        assert ModerationCase.objects.count() == 1  # and the transaction goes on
    message.delete()
    with pytest.raises(IntegrityError):  # no message: not a race, the error stands
        moderation._create_auto_case(message_id=message.pk)


def test_a_verdict_costs_six_statements(conversation, django_assert_num_queries):
    case = moderation.case_open(message_id=answer(conversation).pk)
    with django_assert_num_queries(6):
        assert moderation._record_result(case_id=case.pk, verdict=CLEAN) == (
            State.AUTO_APPROVED,
            None,
        )
    stored = ModerationCase.objects.get(pk=case.pk)
    assert (stored.flagged, stored.top_score, stored.moderation_model) == (False, 0.01, "m")
    assert (stored.category_scores, stored.categories, stored.result) == ({"hate": 0.01}, [], {})
    assert stored.moderated_at is not None and stored.updated_at > case.updated_at
    assert (stored.last_error, stored.next_attempt_at) == ("", None)
    with pytest.raises(ModerationCase.DoesNotExist):
        moderation._record_result(case_id=case.pk + 1000, verdict=CLEAN)


def test_a_held_verdict_hides_the_message_and_a_decision_shows_it_again(
    settings, users, conversation
):
    settings.MODERATION_HOLD_FLAGGED = True
    message = answer(conversation, "bad")
    case = moderation.case_open(message_id=message.pk)
    flagged = moderation.Verdict(
        flagged=True, categories=["hate"], scores={"hate": 0.9}, model="m", raw={"id": "x"}
    )
    state, change = moderation._record_result(case_id=case.pk, verdict=flagged)
    assert state == State.FLAGGED
    assert (change.hidden, change.message_id, change.conversation_id, change.payload) == (
        True,
        message.pk,
        conversation.id,
        None,
    )
    stored = ModerationCase.objects.get(pk=case.pk)
    assert (stored.categories, stored.category_scores, stored.result) == (
        ["hate"],
        {"hate": 0.9},
        {"id": "x"},
    )
    assert (stored.flagged, stored.top_score, stored.state) == (True, 0.9, State.FLAGGED)
    assert Message.objects.get(pk=message.pk).redacted is True

    change = moderation.case_decide(case_id=case.pk, actor=users["alice"], action="approve").change
    assert (change.hidden, change.message_id) == (False, message.pk)
    shown = Message.objects.select_related("author").get(pk=message.pk)
    assert shown.redacted is False
    assert change.payload == protocol.message_payload(shown)  # as the ORM's object gives it


def test_a_message_stays_hidden_while_any_of_its_cases_hides_it(users, conversation):
    users["mod"] = users["alice"]
    message = answer(conversation)
    auto = moderation.case_open(message_id=message.pk)
    report, _ = moderation.report_create(
        conversation_id=conversation.id, message_id=str(message.pk), user=users["bob"], reason="r"
    )
    assert moderation.case_decide(case_id=report.pk, actor=users["mod"], action="reject").change
    message.refresh_from_db()
    assert message.redacted is True
    # The verdict on the other case changes nothing: the rejected report still hides it.
    assert moderation._record_result(case_id=auto.pk, verdict=CLEAN) == (State.AUTO_APPROVED, None)
    change = moderation.case_undo(case_id=report.pk, actor=users["mod"]).change
    assert (change.hidden, change.message_id, change.payload["content"]) == (
        False,
        message.pk,
        "an answer",
    )
    message.refresh_from_db()
    assert message.redacted is False
