"""ORM calls from async code: every call on the process's one database thread.

`channels.db.database_sync_to_async` (thread-sensitive, closing stale connections
around each call). Running calls on worker threads instead (`thread_sensitive=False`
with PostgreSQL's pool) was measured and not adopted: answers started faster when 50
began within a second, but deliveries slowed as those threads took the GIL from the
event loop (docs/decisions.md). One name for every call site keeps that choice in one
place.
"""

from channels.db import database_sync_to_async

db = database_sync_to_async  # `db(fn)`: fn as a coroutine function on the database thread
