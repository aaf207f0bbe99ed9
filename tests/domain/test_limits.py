"""Every limit is a setting, answered by its own error code (or close code)."""

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat.models import Message, TokenUsage
from chat.realtime.limits import TokenBucket
from tests.sockets import connect, frames_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]


@pytest.fixture(autouse=True)
def fast_simulator(settings):
    settings.SIMULATOR_TTFT_MS = 0
    settings.SIMULATOR_CHUNK_MS = 1


async def closed_with(comm) -> int:
    while True:
        output = await comm.receive_output(5)
        if output["type"] == "websocket.close":
            return output["code"]


@pytest.mark.django_db(transaction=False)
@given(st.lists(st.floats(0, 0.5), max_size=200))
def test_token_bucket_never_allows_more_than_burst_plus_rate_times_elapsed(gaps):
    bucket, now, allowed = TokenBucket(rate=5, burst=10), 0.0, 0
    for gap in gaps:
        now += gap
        allowed += bucket.allow(now)
    assert allowed <= 10 + 5 * now + 1e-9


async def test_a_frame_flood_is_closed_with_4429_and_others_carry_on(users, conversation, settings):
    settings.WS_FRAMES_PER_SECOND = 1
    settings.WS_FRAME_BURST = 5
    flooder = await connect(users["bob"], conversation.id)
    other = await connect(users["alice"], conversation.id)
    for _ in range(20):
        await flooder.send_json_to({"type": "sync"})
    frames = []
    while (output := await flooder.receive_output(5))["type"] != "websocket.close":
        frames.append(json.loads(output["text"]))
    assert output["code"] == 4429
    assert [f for f in frames if f["type"] == "error"][-1]["code"] == "flood"
    await other.send_json_to({"type": "prompt", "content": "Count to 3"})
    done = (await frames_until(other, lambda f: f["type"] == "done"))[-1]
    assert done["message"]["content"] == "1, 2, 3"
    await other.disconnect()


async def test_connections_per_user_are_capped(users, conversation, settings):
    settings.WS_MAX_CONNECTIONS_PER_USER = 2
    first = await connect(users["bob"], conversation.id)
    second = await connect(users["bob"], conversation.id)
    third = await connect(users["bob"], conversation.id, expect_snapshot=False)
    error = json.loads(await third.receive_from())
    assert error["code"] == "too_many_connections"
    assert await closed_with(third) == 4429
    await first.disconnect()
    fourth = await connect(users["bob"], conversation.id)  # a slot came free
    await fourth.send_json_to({"type": "sync"})
    assert (await frames_until(fourth, lambda f: f["type"] == "snapshot"))[-1]
    for comm in (second, fourth):
        await comm.disconnect()


async def test_concurrent_generations_per_user_are_capped(users, conversation, settings):
    from asgiref.sync import sync_to_async

    from chat.domain import services

    settings.MAX_GENERATIONS_PER_USER = 1
    settings.SIMULATOR_CHUNK_MS = 5
    other = await sync_to_async(services.conversation_create)(owner=users["alice"], title="2")
    first, second = (
        await connect(users["alice"], conversation.id),
        await connect(users["alice"], other.id),
    )
    await first.send_json_to({"type": "prompt", "content": "Count to 300"})
    await frames_until(first, lambda f: f["type"] == "delta")
    await second.send_json_to({"type": "prompt", "content": "hello"})
    error = (await frames_until(second, lambda f: f["type"] == "error"))[-1]
    assert error["code"] == "too_many_generations"
    assert await Message.objects.filter(conversation=other).acount() == 0
    await frames_until(first, lambda f: f["type"] == "done", timeout=20)
    await first.disconnect()
    await second.disconnect()


async def test_daily_quota_reserves_before_the_call_and_settles_to_real_usage(
    users, conversation, settings
):
    settings.OPENAI_MAX_TOKENS = 100
    settings.DAILY_TOKEN_QUOTA = 250
    comm = await connect(users["bob"], conversation.id)
    await comm.send_json_to({"type": "prompt", "content": "Count to 5"})
    done = (await frames_until(comm, lambda f: f["type"] == "done"))[-1]["message"]
    usage = await TokenUsage.objects.aget(message_id=done["id"])
    assert usage.settled
    assert usage.used == done["usage"]["total_tokens"] < usage.reserved

    # Reserved ~105 of the 250 - (used) left: a second fits, a third would not.
    await comm.send_json_to({"type": "prompt", "content": "Count to 6"})
    await frames_until(comm, lambda f: f["type"] == "done")
    settings.DAILY_TOKEN_QUOTA = done["usage"]["total_tokens"] * 2 + 50
    before = await Message.objects.acount()
    await comm.send_json_to({"type": "prompt", "content": "Count to 7", "client_msg_id": "q"})
    error = (await frames_until(comm, lambda f: f["type"] == "error"))[-1]
    assert error["code"] == "quota_exceeded"
    assert error["client_msg_id"] == "q"
    assert 0 < error["retry_after"] <= 86400
    assert error["reset_at"].endswith("+00:00")
    assert await Message.objects.acount() == before  # nothing stored, nothing sent upstream
    await comm.disconnect()


async def test_api_bodies_over_the_limit_get_413(users, settings):
    from django.test import AsyncClient

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client = AsyncClient()
    await client.aforce_login(users["alice"])
    response = await client.post(
        "/api/conversations/", {"title": "x" * 5000}, content_type="application/json"
    )
    assert response.status_code == 413
    assert json.loads(response.content)["error"]["code"] == "too_large"


async def test_prompts_per_minute_are_capped(users, conversation, settings):
    settings.PROMPTS_PER_MINUTE = 2
    comm = await connect(users["bob"], conversation.id)
    for n in (1, 2):
        await comm.send_json_to({"type": "prompt", "content": f"Count to {n}"})
        await frames_until(comm, lambda f: f["type"] == "done")
    await comm.send_json_to({"type": "prompt", "content": "Count to 3"})
    error = (await frames_until(comm, lambda f: f["type"] == "error"))[-1]
    assert error["code"] == "rate_limited"
    assert error["retry_after"] >= 1
    await asyncio.sleep(0)
    await comm.disconnect()


async def test_regenerates_count_against_the_prompt_rate(users, conversation, settings):
    settings.PROMPTS_PER_MINUTE = 3
    comm = await connect(users["bob"], conversation.id)
    await comm.send_json_to({"type": "prompt", "content": "Count to 2"})
    done = (await frames_until(comm, lambda f: f["type"] == "done"))[-1]
    for _ in range(2):  # the prompt and two regenerates: three generations
        await comm.send_json_to({"type": "regenerate", "message_id": done["message"]["id"]})
        await frames_until(comm, lambda f: f["type"] == "done")
    await comm.send_json_to({"type": "regenerate", "message_id": done["message"]["id"]})
    error = (await frames_until(comm, lambda f: f["type"] == "error"))[-1]
    assert error["code"] == "rate_limited"
    answers = await Message.objects.filter(role=Message.Sender.ASSISTANT).acount()
    assert answers == 3  # the fourth never started
    await asyncio.sleep(0)
    await comm.disconnect()


def test_the_rate_limit_waits_for_the_limit_th_newest_prompt_to_leave_the_window(
    users, conversation, settings
):
    """Racing processes can store more prompts than the limit: the next one fits when
    the count falls below it, so the wait runs from the limit-th newest, not the oldest."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from chat.domain import services
    from chat.exceptions import RateLimited

    def check_prompt_rate(user):
        with transaction.atomic():  # the check takes the user's quota lock
            services._lock_user_checking_rate(user=user)

    settings.PROMPTS_PER_MINUTE = 2
    now = timezone.now()
    for age_s in (50, 40, 10):  # three in the window, one more than the limit
        usage = TokenUsage.objects.create(user=users["bob"], day=now.date(), reserved=1)
        TokenUsage.objects.filter(pk=usage.pk).update(created_at=now - timedelta(seconds=age_s))
    with pytest.raises(RateLimited) as refused:
        check_prompt_rate(users["bob"])
    assert 19 <= refused.value.retry_after <= 20  # the 40-second-old prompt, not the 50
    settings.PROMPTS_PER_MINUTE = 4
    check_prompt_rate(users["bob"])  # three of four: allowed
    settings.PROMPTS_PER_MINUTE = 0
    with pytest.raises(RateLimited):
        check_prompt_rate(users["bob"])


@pytest.mark.parametrize(
    "content",
    ["\x00", "a\x00b", "lone \ud800", "   \n\t ", "\u202e\u2066", "", "😀" * 40_000],
    ids=["nul", "embedded-nul", "surrogate", "whitespace", "only-bidi", "empty", "long-emoji"],
)
async def test_hostile_prompts_never_reach_the_upstream(users, conversation, settings, content):
    from chat.upstream.client import get_client

    settings.PROMPT_MAX_CHARS = 32_000
    simulator = get_client()._client._transport.simulator  # the in-process upstream
    before = simulator.requests_seen
    comm = await connect(users["bob"], conversation.id)
    frame = json.dumps({"type": "prompt", "content": content}, ensure_ascii=False)
    await comm.send_to(text_data=frame)
    error = (await frames_until(comm, lambda f: f["type"] == "error"))[-1]
    assert error["code"] in ("bad_frame", "too_long")
    await comm.send_json_to({"type": "sync"})  # the socket still works
    assert (await frames_until(comm, lambda f: f["type"] == "snapshot"))[-1]["messages"] == []
    assert simulator.requests_seen == before
    assert await Message.objects.acount() == 0
    await comm.disconnect()


async def test_a_megabyte_of_emoji_is_closed_as_too_big_before_parsing(users, conversation):
    from chat.upstream.client import get_client

    simulator = get_client()._client._transport.simulator
    before = simulator.requests_seen
    comm = await connect(users["bob"], conversation.id)
    frame = json.dumps({"type": "prompt", "content": "😀" * 262_144}, ensure_ascii=False)
    await comm.send_to(text_data=frame)  # 1 MiB of UTF-8
    assert await closed_with(comm) == 1009
    assert simulator.requests_seen == before
    assert await Message.objects.acount() == 0
