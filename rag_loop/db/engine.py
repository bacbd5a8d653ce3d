"""The only place that creates the database engine and the session factory."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: writers in other processes meet busy_timeout only
    fcntl = None  # type: ignore[assignment]

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Dialect, Engine, create_engine, event, insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.errors import BackendUnavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITE_OPTION = "rag_loop_write"


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine that behaves the same on SQLite (WAL) and PostgreSQL."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=20,
            max_overflow=20,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, issue BEGIN, so transactions are real.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A write transaction (see `transaction`) takes the write lock up front with
            # IMMEDIATE: two writers that both started as readers cannot deadlock. Reads
            # use a plain BEGIN and never wait for writers (WAL).
            if conn.get_execution_options().get(WRITE_OPTION):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=20, max_overflow=20)


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    try:
        command.upgrade(alembic_config(engine), "head")
    except OperationalError as exc:
        raise BackendUnavailable(
            f"cannot reach the database at {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.orig}"
        ) from exc


def _sqlite_write_lock(bind: sessionmaker[Session] | Engine) -> AbstractContextManager[object]:
    """SQLite has one writer at a time. Writers of this process queue on a Python lock,
    which hands over at once; writers in other processes (`serve --workers N`, a CLI
    command beside the server) queue on an advisory file lock beside the database, which
    the kernel hands over at once too. Without it they would meet SQLite's busy handler,
    which polls with sleeps (up to 100 ms each) and collapses throughput under contention.
    SQLite's own locking (BEGIN IMMEDIATE, busy_timeout) still guards against writers that
    do not take this lock."""
    engine = bind if isinstance(bind, Engine) else bind.kw.get("bind")
    if not isinstance(engine, Engine) or engine.dialect.name != "sqlite":
        return nullcontext()
    key = str(engine.url)
    with _LOCKS_GUARD:
        lock = _SQLITE_WRITE_LOCKS.get(key)
        if lock is None:
            lock = _SQLITE_WRITE_LOCKS[key] = _WriteLock(engine.url.database)
        return lock


class _WriteLock:
    """A thread lock, then an exclusive flock() on `<database>-writelock` (POSIX; an
    in-memory database or a system without fcntl has the thread lock only)."""

    def __init__(self, database: str | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = (
            f"{database}-writelock" if database and database != ":memory:" and fcntl else None
        )
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._path is None:
            return
        try:
            if self._fd is None or self._pid != os.getpid():  # a forked child needs its own
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits with the GIL released
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._fd is not None and self._path is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_LOCKS_GUARD = threading.Lock()
_SQLITE_WRITE_LOCKS: dict[str, _WriteLock] = {}


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A Core connection in a write transaction, for hot paths that insert rows without
    the ORM (about 1 ms less per request than a Session). Same locking as `transaction`."""
    with (
        _sqlite_write_lock(engine),
        engine.connect().execution_options(**{WRITE_OPTION: True}) as conn,
        conn.begin(),
    ):
        yield conn


def insert_rows(engine: Engine, *inserts: tuple[type[Any], Sequence[Mapping[str, Any]]]) -> None:
    """Insert rows into the tables of mapped classes in one write transaction, on a raw
    pooled DBAPI connection: for the hottest write (an answer's interaction and its
    retrievals). Each INSERT is compiled once per dialect and column set and each value goes
    through its column type's own bind processor, so rows are stored exactly as SQLAlchemy
    stores them; what is skipped is the Connection's per-statement bookkeeping (on SQLite
    0.44 ms -> 0.20 ms for an interaction with five retrievals, measured in-process). Rows
    of one table must all have the same keys, and every column SQLAlchemy would fill in by
    default must be given (no Python-side defaults run here). Locks as `write_connection`."""
    with _sqlite_write_lock(engine):
        raw = engine.raw_connection()
        try:
            cursor = RawCursor(engine.dialect, raw.dbapi_connection)
            try:
                if engine.dialect.name == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")  # the pool's connections autocommit
                for model, rows in inserts:
                    cursor.insert(model, rows)
                with cursor._errors("COMMIT", ()):
                    raw.commit()
            except BaseException:
                raw.rollback()
                raise
            finally:
                cursor.close()
        finally:
            raw.close()


class RawCursor:
    """A DBAPI cursor for the hot write paths: `insert_rows` (an answer's interaction) and,
    through `raw_cursor`, the group-committed feedback batch in the writer's transaction.
    Through `Connection.execute` that batch cost the writer thread ~0.3 ms of CPU per item,
    mostly SQLAlchemy's per-statement bookkeeping and an INSERT .. RETURNING that it runs row
    by row to keep the ids in order. DBAPI errors are raised as SQLAlchemy raises them.
    SELECTs here return plain tuples with no result processing: use them for strings and
    integers only."""

    def __init__(self, dialect: Dialect, dbapi_connection: Any) -> None:
        self.dialect = dialect
        self._dbapi_error = dialect.loaded_dbapi.Error
        self._cursor: Any = dbapi_connection.cursor()
        self._mark = "?" if dialect.paramstyle == "qmark" else "%s"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._errors(sql, params):
            self._cursor.execute(sql, params)

    def marks(self, count: int) -> str:
        """`count` positional placeholders for an IN list: `?, ?, ?` (or `%s, ...`)."""
        return ", ".join([self._mark] * count)

    def rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a SELECT written with `marks()`; all its rows."""
        with self._errors(sql, params):
            self._cursor.execute(sql, params)
            return list(self._cursor.fetchall())

    def insert(self, model: type[Any], rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows of one table (all with the same keys), stored as `insert_rows` stores them."""
        if not rows:
            return
        sql, params = _prepared_insert(self.dialect, model, rows)
        with self._errors(sql, params):
            if len(params) == 1:
                self._cursor.execute(sql, params[0])
            else:
                self._cursor.executemany(sql, params)

    def insert_returning_ids(
        self, model: type[Any], rows: Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """As `insert`, and the database's new `id` of each row, in the order of `rows`."""
        if not rows:
            return []
        sql, params = _prepared_insert(self.dialect, model, rows, returning_id=True)
        ids: list[int] = []
        with self._errors(sql, params):
            if self.dialect.name == "postgresql" and len(params) > 1:
                # psycopg pipelines the statements and keeps one result set per row
                self._cursor.executemany(sql, params, returning=True)
                while True:
                    ids.append(self._cursor.fetchone()[0])
                    if not self._cursor.nextset():
                        break
            else:  # SQLite: each statement is a call into the library, no round trip
                for values in params:
                    self._cursor.execute(sql, values)
                    ids.append(self._cursor.fetchone()[0])
        return ids

    def close(self) -> None:
        self._cursor.close()

    @contextmanager
    def _errors(self, sql: str, params: Any) -> Iterator[None]:
        try:
            yield
        except self._dbapi_error as exc:
            raise DBAPIError.instance(
                sql, params, exc, self._dbapi_error, dialect=self.dialect
            ) from exc


@contextmanager
def raw_cursor(conn: Connection) -> Iterator[RawCursor]:
    cursor = RawCursor(conn.dialect, conn.connection.dbapi_connection)
    try:
        yield cursor
    finally:
        cursor.close()


_Processors = list[tuple[str, Callable[[Any], Any] | None]]
_INSERTS: dict[tuple[str, str, tuple[str, ...], bool], tuple[str, bool, _Processors]] = {}


def _prepared_insert(
    dialect: Dialect,
    model: type[Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    returning_id: bool = False,
) -> tuple[str, list[Any]]:
    keys = tuple(rows[0])
    cache_key = (dialect.name, model.__tablename__, keys, returning_id)
    found = _INSERTS.get(cache_key)
    if found is None:
        statement = insert(model)
        if returning_id:
            statement = statement.returning(model.id)
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        names = list(compiled.positiontup or ()) if compiled.positional else list(compiled.binds)
        processors: _Processors = [
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in names
        ]
        found = _INSERTS[cache_key] = (str(compiled), bool(compiled.positional), processors)
    sql, positional, processors = found
    params: list[Any] = []
    for row in rows:
        values = [(process(row[name]) if process else row[name]) for name, process in processors]
        params.append(
            values if positional else dict(zip((n for n, _ in processors), values, strict=True))
        )
    return sql, params


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error.

    On SQLite it begins with the write lock held (BEGIN IMMEDIATE); plain sessions from the
    factory are for reads and never block on writers.
    """
    with _sqlite_write_lock(factory), factory() as session, session.begin():
        session.connection(execution_options={WRITE_OPTION: True})
        yield session
