"""ORM calls from async code: every call on the process's one database thread.

`channels.db.database_sync_to_async` (thread-sensitive, closing stale connections
around each call). One name for every call site keeps that choice in one place
(docs/decisions.md says why not worker threads).
"""

from channels.db import database_sync_to_async

db = database_sync_to_async  # `db(fn)`: fn as a coroutine function on the database thread
