"""The embedded default (SQLite): a transaction that reads before it writes, as a prompt
does (it takes the user's quota lock with a SELECT), waits for another writer instead of
failing at once with "database is locked"."""

import threading

import pytest
from django.conf import settings
from django.db import connections, transaction

ALIAS = "locking"


@pytest.fixture
def sqlite_file(tmp_path, django_db_blocker):
    """A database alias on a SQLite file of its own, with the project's SQLite options."""
    options = settings.DATABASES["default"].get("OPTIONS", {})
    if "transaction_mode" not in options:  # the suite runs on PostgreSQL
        pytest.skip("the project's SQLite options apply only to a SQLite default")
    database = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(tmp_path / "locking.sqlite3"),
        "OPTIONS": dict(options),
    }
    configured = connections.configure_settings({**connections.settings, ALIAS: database})
    connections.settings[ALIAS] = configured[ALIAS]
    with django_db_blocker.unblock():
        yield
        connections[ALIAS].close()
    del connections.settings[ALIAS]


def test_a_transaction_that_reads_first_waits_for_another_writer(sqlite_file):
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("CREATE TABLE t (who TEXT)")
    writing = threading.Event()

    def other_writer() -> None:
        with transaction.atomic(using=ALIAS), connections[ALIAS].cursor() as cursor:
            cursor.execute("INSERT INTO t VALUES ('other')")
            writing.set()
            threading.Event().wait(0.3)  # commits a moment later
        connections[ALIAS].close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert writing.wait(5)
    with transaction.atomic(using=ALIAS), connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM t")  # reads first, like the quota lock
        cursor.execute("INSERT INTO t VALUES ('reader')")
    thread.join(5)
    with connections[ALIAS].cursor() as cursor:
        cursor.execute("SELECT who FROM t ORDER BY who")
        assert cursor.fetchall() == [("other",), ("reader",)]
