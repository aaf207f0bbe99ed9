"""PostgreSQL ends every connection of the app (a restart, a failover, an idle timeout):
the pooled ones are checked before use, so the next requests, handshakes and prompts
work, with no restart of the app."""

import psycopg
import pytest

from tests import services
from tests.live import Deployment, Session

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.timeout(90),
]


def terminate_connections_to(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(services.POSTGRES_ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


async def test_connections_the_database_ended_are_replaced_not_used(redis_postgres: Deployment):
    server = redis_postgres.start_server()
    alice = await Session(server, "alice").login()
    conv = await alice.create_conversation()
    for _ in range(6):  # fill the pool with connections that will be ended
        assert (await alice.api("GET", "/api/conversations/"))[0] == 200
    assert terminate_connections_to(redis_postgres.env["DATABASE_URL"]) >= 1

    statuses = [
        (await alice.api("GET", f"/api/conversations/{conv}/messages/"))[0] for _ in range(12)
    ]
    assert statuses == [200] * 12
    viewers = [await alice.viewer(conv) for _ in range(8)]  # each handshake reads the database
    _, placeholder = await viewers[0].prompt("Count to 5")
    assert (await viewers[0].done(placeholder["id"]))["content"] == "1, 2, 3, 4, 5"
    for viewer in viewers:
        await viewer.close()
    await alice.close()
    server.process.stop()
    server.assert_clean_log()
