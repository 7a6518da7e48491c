"""Core SELECTs run on the driver's cursor itself, for the few reads every poll makes."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

Processor = Callable[[Any], Any] | None
Row = tuple[Any, ...]


class _Plan:
    """A statement compiled for one dialect, with its types' bind and result processors."""

    def __init__(self, statement: Select[*tuple[Any, ...]], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = tuple(compiled.positiontup or ()) if compiled.positional else None
        self.binds: dict[str, Processor] = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        self.types = [column.type.dialect_impl(dialect) for column in statement.selected_columns]
        self.dialect = dialect
        # Some result processors depend on the type the driver reports (Postgres numerics): known
        # from the first cursor's description on.
        self.columns: tuple[Processor, ...] | None = None

    def parameters(self, values: Mapping[str, Any]) -> Any:
        processed = {name: (p(values[name]) if p else values[name]) for name, p in self.binds.items()}
        if self.positional is not None:
            return tuple(processed[name] for name in self.positional)
        return processed

    def rows(self, raw: Sequence[Sequence[Any]], description: Sequence[Sequence[Any]]) -> list[Row]:
        if self.columns is None:
            self.columns = tuple(
                t.result_processor(self.dialect, d[1]) for t, d in zip(self.types, description, strict=True)
            )
        columns = self.columns
        return [tuple(p(v) if p else v for p, v in zip(columns, r, strict=True)) for r in raw]


class CompiledSelect:
    """A Core SELECT compiled once per engine and run on the connection's DBAPI cursor.

    The values are those `Connection.execute` gives: the same SQL, through the column types' own
    processors. What it skips is the per-call machinery (execution context, result and row objects),
    about two thirds of the cost of a one-row read. A driver error is left to `Connection.execute`,
    which runs the statement again and raises it wrapped, as every other query's errors are.
    """

    def __init__(self, statement: Select[*tuple[Any, ...]]) -> None:
        self.statement = statement
        self._plans: weakref.WeakKeyDictionary[Dialect, _Plan] = weakref.WeakKeyDictionary()

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect)
        if plan is None:
            plan = self._plans[dialect] = _Plan(self.statement, dialect)
        return plan

    def rows(self, connection: Connection, values: Mapping[str, Any]) -> list[Row]:
        """Every row the statement selects with these bound values."""
        dialect = connection.dialect
        plan = self._plan(dialect)
        try:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(plan.sql, plan.parameters(values))
                raw, description = cursor.fetchall(), cursor.description
            finally:
                cursor.close()
        except dialect.loaded_dbapi.Error:
            return [tuple(row) for row in connection.execute(self.statement, dict(values))]
        return plan.rows(raw, description)

    async def rows_async(
        self, connection: AsyncConnection[Any], dialect: Dialect, values: Mapping[str, Any]
    ) -> list[Row]:
        """`rows` on an async psycopg connection, compiled for `dialect` (its sync engine's).

        A driver error is raised as SQLAlchemy's own (an OperationalError is 503 `database_unavailable`).
        """
        plan = self._plan(dialect)
        parameters = plan.parameters(values)
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(plan.sql, parameters)
                raw = await cursor.fetchall()
                description = cursor.description
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(plan.sql, parameters, exc, dialect.loaded_dbapi.Error) from exc
        assert description is not None
        return plan.rows(raw, description)
