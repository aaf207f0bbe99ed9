"""Hand-written statements for a prompt's trip to the database, on SQLite and PostgreSQL.

Every prompt waits for these before its answer can start, on the process's one database
thread, so they are written out rather than built by the ORM (docs/decisions.md says
why, with `bench.db_cost`'s figures). Tables and columns come from the models' `_meta`.
The statements stay plain SQL that both databases run; the few differences (how a UUID
or a datetime is stored, `FOR UPDATE`) are bridged by the helpers here, with Django's own
field and backend methods, so the values stored are exactly what the ORM would store.
"""

import functools
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Model
from django.db.models.fields import AutoFieldMixin
from django.utils.dateparse import parse_datetime


def fetch_one(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def fetch_all(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def execute(sql: str, params: Sequence[Any]) -> int:
    """Run a write; the number of rows it touched."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def table(model: type[Model]) -> str:
    """The model's table name, quoted for a statement."""
    return connection.ops.quote_name(model._meta.db_table)


@functools.cache
def user_table() -> tuple[str, str]:
    """The user model's table and primary-key column (the model is a setting)."""
    meta = get_user_model()._meta
    return meta.db_table, meta.pk.column


def for_update() -> str:
    """The row-lock clause, where the database has one (SQLite serializes writers)."""
    return " FOR UPDATE" if connection.features.has_select_for_update else ""


def uuid_param(value: uuid.UUID | str) -> Any:
    """A UUID as its column stores it (native on PostgreSQL, 32 hex digits on SQLite);
    ValueError for a string that is not one."""
    value = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    return value if connection.features.has_native_uuid_field else value.hex


def datetime_param(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def date_param(value: date) -> Any:
    return connection.ops.adapt_datefield_value(value)


def datetime_value(value: Any) -> datetime | None:
    """A datetime read from any column: SQLite gives naive UTC datetimes for datetime
    columns and text for computed ones; PostgreSQL gives aware ones."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def insert(rows: Sequence[Model]) -> None:
    """INSERT model objects of one model in one statement, with the values `save()`
    would store, except that a timestamp already set is kept (`auto_now_add` would
    overwrite it), so a caller can order two rows it inserts together. Database-numbered
    keys are left to the database and not read back."""
    model = type(rows[0])
    fields = [
        f
        for f in model._meta.concrete_fields
        if not (isinstance(f, AutoFieldMixin) and getattr(rows[0], f.attname) is None)
    ]
    stamped = {f for f in fields if getattr(f, "auto_now", 0) or getattr(f, "auto_now_add", 0)}
    params = []
    for row in rows:
        for f in fields:
            value = getattr(row, f.attname)
            if value is None and f in stamped:
                value = f.pre_save(row, add=True)
            params.append(f.get_db_prep_save(value, connection))
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    execute(
        f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "
        f"VALUES {', '.join([placeholders] * len(rows))}",
        params,
    )
    for row in rows:
        row._state.adding = False
        row._state.db = connection.alias


def update(model: type[Model], values: dict[str, Any], where: str, params: Sequence[Any]) -> int:
    """UPDATE the rows of `model` that `where` (SQL, with `params`) selects, setting
    `values` (field name: value) as `save()` would store them; the rows touched."""
    fields = [model._meta.get_field(name) for name in values]
    quote = connection.ops.quote_name
    return execute(
        f"UPDATE {quote(model._meta.db_table)} "
        f"SET {', '.join(f'{quote(f.column)} = %s' for f in fields)} WHERE {where}",
        [f.get_db_prep_save(v, connection) for f, v in zip(fields, values.values(), strict=True)]
        + list(params),
    )


def columns(model: type[Model], table_alias: str) -> str:
    """The model's columns, for a SELECT whose rows `load` turns back into objects."""
    quote = connection.ops.quote_name
    return ", ".join(f"{table_alias}.{quote(f.column)}" for f in model._meta.concrete_fields)


def load(model: type[Model], row: Sequence[Any]) -> Model:
    """A model object from a row that begins with `columns(model)`, its values
    converted as the ORM converts them (SQLite's UUIDs, datetimes and booleans)."""
    fields = model._meta.concrete_fields
    values = list(row[: len(fields)])
    for i, expression, converters in _converters(model, connection.vendor):
        value = values[i]
        for convert in converters:
            value = convert(value, expression, connection)
        values[i] = value
    return model.from_db(connection.alias, [f.attname for f in fields], values)


@functools.cache
def _converters(model: type[Model], vendor: str) -> list[tuple[int, Any, list[Any]]]:
    # What the ORM's compiler applies to each selected column (`get_db_converters`),
    # for the columns that have any; once per model and database vendor.
    found = []
    for i, f in enumerate(model._meta.concrete_fields):
        expression = f.get_col(model._meta.db_table)
        converters = connection.ops.get_db_converters(expression) + f.get_db_converters(connection)
        if converters:
            found.append((i, expression, converters))
    return found
