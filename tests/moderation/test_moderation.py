"""Moderation in-process: the case state machine, the call after `done` (in-process
simulator: `flagme` and `[[flag:<category>]]` are flagged, `[[sim fault=http_500]]` in the
moderated text fails the call), retries, reports, and redaction reaching open sockets,
later snapshots and the API."""

import asyncio
import json
from datetime import timedelta
from urllib.parse import quote_plus

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.test import AsyncClient
from django.utils import timezone

from chat import moderation
from chat.domain import services
from chat.management.commands.moderate_pending import _work_until_stopped
from chat.models import Membership, Message, ModerationCase, ModerationEvent, Role
from chat.upstream import client as upstream
from tests.sockets import connect as open_socket
from tests.sockets import frames_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

State = ModerationCase.State

FLAGGED = moderation.Verdict(
    flagged=True,
    categories=["violence"],
    scores={"violence": 0.97, "hate": 0.001},
    model="omni-moderation-latest",
    raw={"flagged": True},
)
CLEAN = moderation.Verdict(
    flagged=False, categories=[], scores={"violence": 0.001}, model="m", raw={"flagged": False}
)


def sim_reply(text: str) -> str:
    """A prompt the simulator answers with exactly `text`."""
    return f"[[sim reply={quote_plus(text)}]]"


@pytest.fixture(autouse=True)
def moderation_settings(settings):
    settings.SIMULATOR_TTFT_MS = 0
    settings.SIMULATOR_CHUNK_MS = 1
    settings.STREAM_FLUSH_MS = 20
    settings.MODERATION_ENABLED = True
    settings.MODERATION_HOLD_FLAGGED = False
    # No background retry loop: the tests drive retries themselves, deterministically.
    settings.MODERATION_RETRY_INTERVAL_S = 0
    settings.MODERATION_RETRY_BACKOFF_S = 0
    settings.STREAM_SWEEP_INTERVAL_S = 0


@pytest.fixture
def users(django_user_model):
    users = {name: django_user_model.objects.create_user(name) for name in ("alice", "bob", "eve")}
    users["mod"] = django_user_model.objects.create_user("mod", is_staff=True)
    users["mod"].groups.add(moderation.moderator_group_ensure())
    return users


@pytest.fixture
def conversation(users):
    conv = services.conversation_create(owner=users["alice"], title="t")
    services.member_set(conversation=conv, actor=users["alice"], username="bob", role=Role.VIEWER)
    return conv


def answer(conversation, text: str = "an answer", status: str = "complete") -> Message:
    prompt = Message.objects.create(conversation=conversation, role="user", content="q")
    return Message.objects.create(
        conversation=conversation,
        role="assistant",
        reply_to=prompt,
        content=text,
        status=status,
        completed_at=timezone.now(),
    )


async def connect(user, conversation_id) -> WebsocketCommunicator:
    # These tests read every frame after the snapshot, presence included.
    return await open_socket(user, conversation_id, wait_presence=False)


async def ask(comm: WebsocketCommunicator, content: str) -> dict:
    """Send a prompt; the final `done` message."""
    await comm.send_json_to({"type": "prompt", "content": content})
    return (await frames_until(comm, lambda f: f["type"] == "done"))[-1]["message"]


# ---- the state machine (services, no sockets) ---------------------------------------


def test_verdicts_move_pending_cases_and_staff_decide_with_who_when_and_note(users, conversation):
    flagged_msg, clean_msg = answer(conversation, "bad"), answer(conversation, "fine")
    flagged = moderation.case_open(message_id=flagged_msg.pk)
    clean = moderation.case_open(message_id=clean_msg.pk)
    assert (flagged.state, clean.state) == (State.PENDING, State.PENDING)
    assert moderation.case_open(message_id=flagged_msg.pk).pk == flagged.pk  # one auto case

    assert moderation._record_result(case_id=flagged.pk, verdict=FLAGGED) == (State.FLAGGED, None)
    assert moderation._record_result(case_id=clean.pk, verdict=CLEAN)[0] == State.AUTO_APPROVED
    flagged.refresh_from_db()
    assert flagged.flagged is True
    assert flagged.categories == ["violence"]
    assert flagged.category_scores["violence"] == pytest.approx(0.97)
    assert flagged.moderation_model == "omni-moderation-latest"
    assert flagged.moderated_at is not None

    decision = moderation.case_decide(
        case_id=flagged.pk, actor=users["mod"], action="reject", note="threat"
    )
    assert decision.case.state == State.REJECTED
    assert (decision.case.decided_by, decision.case.note) == (users["mod"], "threat")
    assert decision.case.decided_at is not None
    assert decision.change.hidden is True
    flagged_msg.refresh_from_db()
    assert flagged_msg.redacted is True
    assert flagged_msg.content == "bad"  # kept for staff

    with pytest.raises(moderation.InvalidTransition):
        moderation.case_decide(case_id=flagged.pk, actor=users["mod"], action="approve")
    undo = moderation.case_undo(case_id=flagged.pk, actor=users["mod"], note="too quick")
    assert undo.case.state == State.FLAGGED  # back where the verdict left it
    assert undo.case.decided_by is None
    assert (undo.change.hidden, undo.change.payload["content"]) == (False, "bad")
    with pytest.raises(moderation.InvalidTransition):
        moderation.case_undo(case_id=flagged.pk, actor=users["mod"])
    assert (
        moderation.case_decide(case_id=flagged.pk, actor=users["mod"], action="approve").change
        is None
    )

    # Staff may overrule the model's approval; undo returns to auto_approved.
    moderation.case_decide(case_id=clean.pk, actor=users["mod"], action="reject")
    assert (
        moderation.case_undo(case_id=clean.pk, actor=users["mod"]).case.state == State.AUTO_APPROVED
    )

    events = list(
        ModerationEvent.objects.filter(case=flagged).values_list(
            "action", "from_state", "to_state", "note"
        )
    )
    assert events == [
        ("reject", "flagged", "rejected", "threat"),
        ("undo", "rejected", "flagged", "too quick"),
        ("approve", "flagged", "approved", ""),
    ]


def test_a_case_decided_while_pending_keeps_the_decision_when_the_verdict_arrives(
    users, conversation
):
    case = moderation.case_open(message_id=answer(conversation).pk)
    moderation.case_decide(case_id=case.pk, actor=users["mod"], action="reject")
    state, _ = moderation._record_result(case_id=case.pk, verdict=CLEAN)
    assert state == State.REJECTED
    undone = moderation.case_undo(case_id=case.pk, actor=users["mod"]).case
    assert undone.state == State.AUTO_APPROVED  # the verdict is known by now

    other = moderation.case_open(message_id=answer(conversation).pk)
    moderation.case_decide(case_id=other.pk, actor=users["mod"], action="approve")
    reopened = moderation.case_undo(case_id=other.pk, actor=users["mod"]).case
    assert (reopened.state, reopened.next_attempt_at) == (State.PENDING, None)


@pytest.mark.parametrize(
    ("status", "content", "opens"),
    [
        ("complete", "x", True),
        ("cancelled", "partial", True),  # viewers saw it: partial text is moderated too
        ("interrupted", "partial", True),
        ("failed", "", False),
        ("streaming", "so far", False),
    ],
)
def test_which_answers_get_a_case(conversation, status, content, opens):
    message = answer(conversation, content, status=status)
    assert (moderation.case_open(message_id=message.pk) is not None) is opens


def test_hold_hides_model_flagged_answers_until_a_human_decides(settings, users, conversation):
    settings.MODERATION_HOLD_FLAGGED = True
    message = answer(conversation, "bad")
    case = moderation.case_open(message_id=message.pk)
    state, change = moderation._record_result(case_id=case.pk, verdict=FLAGGED)
    assert state == State.FLAGGED and change.hidden is True
    decision = moderation.case_decide(case_id=case.pk, actor=users["mod"], action="approve")
    assert decision.change.hidden is False
    assert decision.change.payload["redacted"] is False

    # A member's report alone never hides an answer the model did not flag.
    report, _ = moderation.report_create(
        conversation_id=conversation.id, message_id=str(message.pk), user=users["bob"], reason="meh"
    )
    assert moderation._record_result(case_id=report.pk, verdict=CLEAN) == (State.FLAGGED, None)


def test_backoff_doubles_and_is_capped(settings):
    settings.MODERATION_RETRY_BACKOFF_S = 10
    assert [moderation.backoff_s(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert moderation.backoff_s(30) == moderation.BACKOFF_MAX_S


def test_moderate_pending_command_clears_pending_cases_and_backfills(conversation, capsys):
    failed_before = moderation.case_open(message_id=answer(conversation, "flagme please").pk)
    ModerationCase.objects.filter(pk=failed_before.pk).update(
        attempts=1, last_error="timeout", next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    without_case = answer(conversation, "[[flag:hate]] text")  # e.g. stored by the sweeper

    call_command("moderate_pending")  # respects the backoff: only the backfilled one
    failed_before.refresh_from_db()
    assert failed_before.state == State.PENDING
    backfilled = ModerationCase.objects.get(message=without_case)
    assert (backfilled.state, backfilled.categories) == (State.FLAGGED, ["hate"])

    call_command("moderate_pending", "--now")
    failed_before.refresh_from_db()
    assert (failed_before.state, failed_before.attempts, failed_before.last_error) == (
        State.FLAGGED,
        2,
        "",
    )
    assert "0 still pending" in capsys.readouterr().out


# ---- through the consumer and the simulator -----------------------------------------


async def test_a_flagged_reply_is_queued_and_rejecting_it_redacts_it_everywhere(
    users, conversation
):
    alice = await connect(users["alice"], conversation.id)
    bob = await connect(users["bob"], conversation.id)
    done = await ask(alice, sim_reply("I will flagme now"))
    assert done["status"] == "complete" and done["redacted"] is False
    await frames_until(bob, lambda f: f["type"] == "done")
    await moderation.drain()

    case = await ModerationCase.objects.aget(message_id=done["id"])
    assert (case.state, case.flagged, case.categories) == (State.FLAGGED, True, ["violence"])
    assert case.result["categories"]["violence"] is True
    assert case.moderation_model == "omni-moderation-latest"
    assert case.attempts == 1

    staff = AsyncClient()
    await staff.aforce_login(users["mod"])
    queue = await staff.get("/admin/chat/moderationcase/?state__exact=flagged")
    assert queue.status_code == 200 and f"#{case.pk}".encode() in queue.content
    response = await staff.post(
        f"/admin/chat/moderationcase/{case.pk}/change/",
        {"decision": "reject", "note": "violent"},
    )
    assert response.status_code == 302

    redacted = (await frames_until(bob, lambda f: f["type"] == "redacted"))[-1]
    assert redacted == {"type": "redacted", "message_id": done["id"]}
    await frames_until(alice, lambda f: f["type"] == "redacted")

    api = AsyncClient()
    await api.aforce_login(users["bob"])
    listed = json.loads((await api.get(f"/api/conversations/{conversation.id}/messages/")).content)
    stored = next(m for m in listed["messages"] if m["id"] == done["id"])
    assert (stored["content"], stored["redacted"]) == ("", True)
    later = await connect(users["bob"], conversation.id)
    snap = next(m for m in later.snapshot["messages"] if m["id"] == done["id"])
    assert (snap["content"], snap["redacted"]) == ("", True)

    # Staff still read the original; undo shows it to viewers again.
    transcript = await staff.get(f"/admin/chat/conversation/{conversation.id}/change/")
    assert b"I will flagme now" in transcript.content
    await staff.post(f"/admin/chat/moderationcase/{case.pk}/change/", {"decision": "undo"})
    restored = (await frames_until(bob, lambda f: f["type"] == "restored"))[-1]
    assert restored["message"]["content"] == "I will flagme now"
    assert restored["message"]["redacted"] is False
    for comm in (alice, bob, later):
        await comm.disconnect()


async def test_the_moderation_call_never_delays_done(users, conversation, monkeypatch):
    release, started = asyncio.Event(), asyncio.Event()

    async def slow_moderation(text):
        started.set()
        await release.wait()
        return FLAGGED

    monkeypatch.setattr(moderation.worker, "moderate_text", slow_moderation)
    alice = await connect(users["alice"], conversation.id)
    done = await ask(alice, sim_reply("hello"))
    assert done["status"] == "complete"
    await asyncio.wait_for(started.wait(), 10)  # the call starts only after `done`
    case = await ModerationCase.objects.aget(message_id=done["id"])
    assert case.state == State.PENDING
    release.set()
    await moderation.drain()
    await case.arefresh_from_db()
    assert case.state == State.FLAGGED
    await alice.disconnect()


async def test_a_process_drain_lets_running_moderation_calls_finish_first(
    users, conversation, monkeypatch
):
    from chat.lifecycle import drain
    from chat.ops import serving

    monkeypatch.setattr(serving, "_accepting", True)  # restored: other tests serve on
    alice = await connect(users["alice"], conversation.id)
    # The moderated text makes the (in-process) moderation call take 300 ms.
    done = await ask(alice, sim_reply("flagme slowly [[sim ttft_ms=300]]"))
    await alice.disconnect()
    await asyncio.sleep(0.05)  # the call is under way

    await drain.drain()  # SIGTERM: sockets moved, answers stored, the client closed

    case = await ModerationCase.objects.aget(message_id=done["id"])
    # Judged before the shared client closed, not failed with "client has been closed".
    assert (case.state, case.attempts, case.last_error) == (State.FLAGGED, 1, "")


async def test_an_outage_leaves_cases_pending_and_the_retry_clears_them(
    users, conversation, settings
):
    alice = await connect(users["alice"], conversation.id)
    # The moderated text carries the fault: the first two moderation calls answer 500.
    text = "flagme [[sim fault=http_500 times=2]]"
    done = await ask(alice, sim_reply(text))
    assert done["content"] == text
    await moderation.drain()
    case = await ModerationCase.objects.aget(message_id=done["id"])
    assert (case.state, case.attempts) == (State.PENDING, 1)
    assert case.last_error.startswith("upstream_error")
    assert case.flagged is None

    report = await moderation.retry_pending()
    assert (report.failed, report.still_pending) == (1, 1)
    await case.arefresh_from_db()
    assert (case.state, case.attempts) == (State.PENDING, 2)

    settings.MODERATION_RETRY_BACKOFF_S = 3600  # not due: a normal pass leaves it alone
    await ModerationCase.objects.filter(pk=case.pk).aupdate(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    assert (await moderation.retry_pending()).moderated == 0
    report = await moderation.retry_pending(force=True)  # `moderate_pending --now`
    assert (report.moderated, report.flagged, report.still_pending) == (1, 1, 0)
    await case.arefresh_from_db()
    assert (case.state, case.attempts, case.last_error) == (State.FLAGGED, 3, "")
    await alice.disconnect()


async def test_a_timed_out_call_leaves_the_case_pending(conversation, settings, monkeypatch):
    settings.MODERATION_TIMEOUT_S = 0.1

    class HungClient:
        """A moderation endpoint that accepts the request and never answers."""

        async def post(self, *_path, **_request):
            await asyncio.Event().wait()

    monkeypatch.setattr("chat.upstream.client.get_client", HungClient)
    message = await sync_to_async(answer)(conversation, "text")
    case = await sync_to_async(moderation.case_open)(message_id=message.pk)
    assert await moderation.run_case(case.pk) == moderation.FAILED
    await case.arefresh_from_db()
    assert (case.state, case.attempts) == (State.PENDING, 1)
    assert case.last_error.startswith("timeout")


@pytest.mark.parametrize(
    "answer_json",
    [{}, {"results": []}, {"results": ["flagged"]}, {"results": [{"categories": ["hate"]}]}, []],
)
async def test_an_unreadable_moderation_answer_leaves_the_case_pending(
    conversation, monkeypatch, answer_json
):
    class OddClient:
        """A moderation endpoint that answers 200 with JSON of the wrong shape."""

        async def post(self, *_path, **_request):
            return answer_json

    monkeypatch.setattr("chat.upstream.client.get_client", OddClient)
    message = await sync_to_async(answer)(conversation, "text")
    case = await sync_to_async(moderation.case_open)(message_id=message.pk)
    assert await moderation.run_case(case.pk) == moderation.FAILED
    await case.arefresh_from_db()
    assert (case.state, case.attempts) == (State.PENDING, 1)
    assert case.last_error.startswith("bad_response")


async def test_the_periodic_task_retries_pending_cases_and_wakes_for_reports(
    users, conversation, settings
):
    settings.MODERATION_RETRY_INTERVAL_S = 3600  # only the first pass and wake-ups run
    message = await sync_to_async(answer)(conversation, "[[flag:harassment]] words")
    worker = asyncio.create_task(moderation.run_forever(first_delay_s=0))
    try:
        case = None
        while case is None or case.state == State.PENDING:
            await asyncio.sleep(0.02)
            case = await ModerationCase.objects.filter(message=message).afirst()
        assert case.state == State.FLAGGED  # backfilled, then moderated by the first pass

        client = AsyncClient()
        await client.aforce_login(users["alice"])
        response = await client.post(
            f"/api/conversations/{conversation.id}/messages/{message.pk}/report/",
            {"reason": "rude"},
            content_type="application/json",
        )
        assert response.status_code == 201
        report_id = json.loads(response.content)["report"]["id"]
        report = await ModerationCase.objects.aget(pk=report_id)
        while report.state == State.PENDING:  # woken by the report, not by the interval
            await asyncio.sleep(0.02)
            await report.arefresh_from_db()
        assert (report.state, report.source, report.reason) == (State.FLAGGED, "report", "rude")
    finally:
        worker.cancel()


async def test_with_a_worker_the_server_opens_the_case_and_the_worker_calls_moderation(
    users, conversation, settings
):
    from chat.lifecycle import background as lifecycle

    settings.MODERATION_WORKER = True
    settings.MODERATION_RETRY_INTERVAL_S = 3600  # would start a server's retry loop
    alice = await connect(users["alice"], conversation.id)
    done = await ask(alice, sim_reply("I will flagme now"))
    await alice.disconnect()
    loop = asyncio.get_running_loop()
    # No call in the server.
    assert not [t for t in moderation.worker._tasks if t.get_loop() is loop]
    background = {t.get_name() for t in lifecycle._background if t.get_loop() is loop}
    assert "moderation-retry" not in background
    case = await ModerationCase.objects.aget(message_id=done["id"])
    assert (case.state, case.attempts, case.source) == (State.PENDING, 0, "auto")

    # The command's loop (`moderate_pending --watch`), stopped as SIGTERM stops it.
    worker = asyncio.create_task(_work_until_stopped(interval_s=0.05, concurrency=2, batch=16))
    try:
        while case.state == State.PENDING:
            await asyncio.sleep(0.02)
            await case.arefresh_from_db()
    finally:
        client = upstream.get_client()  # the one the worker's calls went through
        worker.cancel()
        await worker
    assert (case.state, case.attempts, case.categories) == (State.FLAGGED, 1, ["violence"])
    # Stopped, it closes its HTTP session (aiohttp logs an error for one left open).
    assert client.is_closed()


async def test_a_pass_calls_up_to_its_concurrency_and_stops_when_the_endpoint_looks_down(
    conversation, monkeypatch
):
    messages = [await sync_to_async(answer)(conversation, f"answer {i}") for i in range(10)]
    running, most = 0, 0
    outage = False

    async def moderate_text(text):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        if outage:
            raise RuntimeError("endpoint down")
        return CLEAN

    monkeypatch.setattr(moderation.worker, "moderate_text", moderate_text)
    report = await moderation.retry_pending(concurrency=4)
    assert (report.backfilled, report.moderated, report.failed, most) == (10, 10, 0, 4)

    for message in messages:
        await ModerationCase.objects.acreate(message=message, source="report", reason="x")
    outage = True
    report = await moderation.retry_pending(concurrency=4)
    # The first four calls fail together: no more start, the other six wait untried.
    assert (report.failed, report.paused, report.still_pending) == (4, True, 10)
    untried = ModerationCase.objects.filter(source="report", state=State.PENDING, attempts=0)
    assert await untried.acount() == 6


async def test_a_worker_pass_judges_cases_in_batches_of_one_call(conversation, monkeypatch):
    texts = [f"answer {i}" for i in range(9)] + ["[[flag:harassment]] words"]
    for text in texts:
        await sync_to_async(answer)(conversation, text)
    calls = []
    call = moderation.moderate_texts

    async def recording(batch):
        calls.append(list(batch))
        return await call(batch)  # the simulator: a result per input, in order

    monkeypatch.setattr(moderation.worker, "moderate_texts", recording)
    report = await moderation.retry_pending(batch=4, concurrency=2)
    assert [len(batch) for batch in calls] == [4, 4, 2]
    assert sorted(text for batch in calls for text in batch) == sorted(texts)
    assert (report.moderated, report.flagged, report.failed) == (10, 1, 0)
    flagged = await ModerationCase.objects.aget(message__content=texts[-1])
    assert (flagged.state, flagged.categories, flagged.attempts) == (
        State.FLAGGED,
        ["harassment"],
        1,
    )
    assert await ModerationCase.objects.filter(state=State.AUTO_APPROVED).acount() == 9


async def test_an_answer_deleted_during_its_batch_call_is_skipped_not_the_batch(
    conversation, monkeypatch
):
    messages = [await sync_to_async(answer)(conversation, f"answer {i}") for i in range(3)]
    call = moderation.moderate_texts

    async def deleting_one(batch):
        await Message.objects.filter(pk=messages[1].pk).adelete()  # its case goes too
        return await call(batch)

    monkeypatch.setattr(moderation.worker, "moderate_texts", deleting_one)
    report = await moderation.retry_pending(batch=3)
    assert (report.moderated, report.failed, report.paused) == (2, 0, False)
    assert await ModerationCase.objects.filter(state=State.AUTO_APPROVED).acount() == 2


async def test_a_failed_batch_call_leaves_all_its_cases_pending_with_backoff(conversation):
    for i in range(3):
        await sync_to_async(answer)(conversation, f"answer {i}")
    # A fault in one input fails the one call, for every case in it.
    await sync_to_async(answer)(conversation, "flagme [[sim fault=http_500 times=1]]")
    report = await moderation.retry_pending(batch=4)
    assert (report.moderated, report.failed, report.paused) == (0, 4, True)
    cases = [case async for case in ModerationCase.objects.all()]
    assert {(c.state, c.attempts, c.last_error[:14]) for c in cases} == {
        (State.PENDING, 1, "upstream_error")
    }
    report = await moderation.retry_pending(batch=4)  # backoff 0 here; the fault is spent
    assert (report.moderated, report.flagged, report.failed) == (4, 1, 0)


async def test_reports_are_member_only_idempotent_and_need_a_reason(users, conversation):
    message = await sync_to_async(answer)(conversation, "hello")
    url = f"/api/conversations/{conversation.id}/messages/{message.pk}/report/"
    alice, bob, eve = AsyncClient(), AsyncClient(), AsyncClient()
    await alice.aforce_login(users["alice"])  # the owner
    await bob.aforce_login(users["bob"])  # a viewer
    await eve.aforce_login(users["eve"])

    async def post(client, body):
        return await client.post(url, body, content_type="application/json")

    assert (
        await AsyncClient().post(url, {"reason": "x"}, content_type="application/json")
    ).status_code == 401
    assert (await post(eve, {"reason": "x"})).status_code == 404
    forbidden = await post(bob, {"reason": "x"})  # viewers are read-only
    assert forbidden.status_code == 403
    assert json.loads(forbidden.content)["error"]["code"] == "forbidden"
    await Membership.objects.filter(user=users["bob"]).aupdate(role="member")
    assert (await post(bob, {"reason": "  "})).status_code == 400
    assert (await post(bob, {"reason": 3})).status_code == 400
    first = await post(bob, {"reason": "spam"})
    again = await post(bob, {"reason": "spam!"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert json.loads(first.content)["report"] == json.loads(again.content)["report"]
    assert json.loads(first.content)["report"]["state"] == "pending"
    bad_id = f"/api/conversations/{conversation.id}/messages/nope/report/"
    assert (
        await bob.post(bad_id, {"reason": "x"}, content_type="application/json")
    ).status_code == 404

    streaming = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", heartbeat_at=timezone.now()
    )
    running = f"/api/conversations/{conversation.id}/messages/{streaming.pk}/report/"
    refused = await bob.post(running, {"reason": "x"}, content_type="application/json")
    assert refused.status_code == 400
    await Message.objects.filter(pk=streaming.pk).aupdate(status="complete")


async def test_hold_hides_a_flagged_answer_from_open_pages_until_approved(
    users, conversation, settings
):
    settings.MODERATION_HOLD_FLAGGED = True
    alice = await connect(users["alice"], conversation.id)
    done = await ask(alice, sim_reply("flagme"))
    held = (await frames_until(alice, lambda f: f["type"] == "redacted"))[-1]
    assert held["message_id"] == done["id"]
    case = await ModerationCase.objects.aget(message_id=done["id"])
    decision = await sync_to_async(moderation.case_decide)(
        case_id=case.pk, actor=users["mod"], action="approve"
    )
    await moderation.announce(decision.change)
    restored = (await frames_until(alice, lambda f: f["type"] == "restored"))[-1]
    assert restored["message"]["content"] == "flagme"
    await alice.disconnect()


async def test_disabled_moderation_opens_no_case(users, conversation, settings):
    settings.MODERATION_ENABLED = False
    alice = await connect(users["alice"], conversation.id)
    await ask(alice, sim_reply("flagme"))
    await moderation.drain()
    assert await ModerationCase.objects.acount() == 0
    assert (await moderation.retry_pending()).backfilled == 0
    await alice.disconnect()


def test_reports_reach_the_queue_even_with_moderation_off(settings, users, conversation):
    settings.MODERATION_ENABLED = False
    message = answer(conversation, "hello")
    case, created = moderation.report_create(
        conversation_id=conversation.id, message_id=str(message.pk), user=users["bob"], reason="x"
    )
    assert created and case.state == State.FLAGGED
    with pytest.raises(moderation.BadReport):
        moderation.report_create(
            conversation_id=conversation.id,
            message_id=str(message.pk),
            user=users["eve"],
            reason="",
        )
