"""CPU and SQL statements per database call of one answer's life, on PostgreSQL.

    .venv/bin/python -m bench.db_cost [--n 200]

Every answer costs the server's one database thread these calls: the frame's access
check, the prompt's transaction, a checkpoint every STREAM_CHECKPOINT_S, the final write,
and moderation's case and verdict. Their Python time (the ORM, psycopg) holds the GIL
the websocket deliveries need, so under a burst of prompts or finishes it shows as added
latency (bench/REPORT.md). Each call is timed `--n` times in this process against a
scratch database created (and dropped) on the local PostgreSQL (`BENCH_POSTGRES_URL`),
with production settings otherwise: CPU time is this process's, statements are counted
by Django's query log.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def _scratch_database() -> tuple[str, Callable[[], None]]:
    import psycopg

    name = f"bench_db_cost_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}")), drop


def measure(name: str, call: Callable[[], object], n: int) -> dict[str, float]:
    from django.db import connection, reset_queries

    for _ in range(5):  # warm: imports, compiled paths, the connection
        call()
    reset_queries()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {
        "call": name,
        "cpu_ms": round(cpu / n * 1e3, 2),
        "wall_ms": round(wall / n * 1e3, 2),
        "statements": round(len(connection.queries) / n, 1),
    }
    print(
        f"{name:24s} cpu {row['cpu_ms']:5.2f} ms   wall {row['wall_ms']:5.2f} ms   "
        f"statements {row['statements']:4.1f}"
    )
    return row


def run(n: int) -> list[dict[str, float]]:
    import django
    from django.conf import settings

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    from chat import moderation
    from chat.domain import selectors, services
    from chat.models import Conversation, Membership, Role

    call_command("migrate", verbosity=0)
    settings.DEBUG = True  # the query log counts statements (and costs a little CPU)
    user = get_user_model().objects.create_user("cost", password="x")
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session.create()
    total = n + 5
    conversations = []
    for _ in range(total):  # one streaming answer per conversation at a time
        conversation = Conversation.objects.create(title="cost", owner=user)
        Membership.objects.create(conversation=conversation, user=user, role=Role.OWNER)
        conversations.append(conversation)
    answers: list[uuid.UUID] = []
    cases: list[int] = []

    def each(items: list) -> Iterator:
        return iter(list(items))

    next_conversation = each(conversations)

    def prompt() -> None:
        submitted = services.prompt_submit(
            conversation_id=next(next_conversation).pk,
            user=user,
            content="How long is a piece of string?",
            client_msg_id=None,
            model="gpt-4o-mini",
        )
        answers.append(submitted.assistant_message.pk)

    text = "word " * 300
    rows = [
        measure(
            "frame_access",
            lambda: selectors.frame_access(
                session=session, conversation_id=conversations[0].pk, user=user
            ),
            n,
        ),
        measure("prompt_submit", prompt, n),
    ]
    to_checkpoint, to_finish, to_moderate = each(answers), each(answers), each(answers)
    rows.append(
        measure(
            "message_checkpoint",
            lambda: services.message_checkpoint(
                message_id=next(to_checkpoint), content=text[:600], seq=120
            ),
            n,
        )
    )
    rows.append(
        measure(
            "message_finish",
            lambda: services.message_finish(
                message_id=next(to_finish),
                status="complete",
                content=text,
                seq=300,
                model="gpt-4o-mini",
                finish_reason="stop",
                usage=(20, 300, 320),
            ),
            n,
        )
    )

    def open_case() -> None:
        case_id, _ = moderation._open_and_claim(message_id=next(to_moderate))
        cases.append(case_id)

    rows.append(measure("moderation: open+claim", open_case, n))
    verdict = moderation.Verdict(
        flagged=False, categories=[], scores={"hate": 0.01}, model="omni-moderation", raw={}
    )
    to_record = each(cases)
    rows.append(
        measure(
            "moderation: verdict",
            lambda: moderation._record_result(case_id=next(to_record), verdict=verdict),
            n,
        )
    )
    per_answer_cpu = sum(r["cpu_ms"] for r in rows) + rows[2]["cpu_ms"]  # ~2 checkpoints
    per_answer_statements = sum(r["statements"] for r in rows) + rows[2]["statements"]
    print(
        f"{'one answer (2 checkpoints)':24s} cpu {per_answer_cpu:5.2f} ms"
        f"{'':19s}statements {per_answer_statements:4.1f}"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="calls timed per service")
    args = parser.parse_args()
    url, drop = _scratch_database()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=url,
        DJANGO_SECRET_KEY="bench-db-cost",
        DAILY_TOKEN_QUOTA="0",
        MAX_GENERATIONS_PER_USER=str(args.n + 10),
        PROMPTS_PER_MINUTE="1000000",  # one user sends them all (the check reads one row)
    )
    try:
        run(args.n)
    finally:
        from django.db import connections

        connections.close_all()
        drop()


if __name__ == "__main__":
    main()
