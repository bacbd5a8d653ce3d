"""The outbox: SQL decides, other systems follow.

Every effect on a system other than the database (an MLflow run, a registered model
version, the MLflow `champion` alias, dropping a Chroma collection) is written as a row of
`outbox` in the same transaction as the SQL change it follows, and applied after commit by
`Outbox.flush`:

- right after the change, by the code that made it (`flush_quietly`: never raises, so an
  MLflow outage delays the registry and nothing else);
- every `mlflow.outbox_interval_seconds` by the schedule of each API process and by every
  queue worker;
- by an operator: `rag-loop outbox flush`, `POST /v1/outbox/flush`.

Applying an entry twice does what applying it once does: an MLflow run carries the entry's
key (a UUID) as the tag `rag_loop.outbox` and is looked up before one is created; the alias entry
points `champion` at whatever SQL says serves *now* (a stale entry cannot move it back); a
drop checks again, when it is applied, that the collection is neither the serving index,
the rollback target nor a shadowed candidate (`index.versions.protected_collections`), and
keeps it if it is. A failed entry is retried with exponential backoff; while MLflow is down
one failing entry per pass is tried, the rest wait. The backlog is visible in
`GET /v1/outbox`, `rag-loop outbox list`, `/metrics` (`rag_loop_outbox_pending`) and the
`/readyz` detail.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from rag_loop.db import leases
from rag_loop.db.engine import transaction
from rag_loop.db.models import (
    AuditEntry,
    EmbedderVersion,
    EvalRun,
    IndexVersion,
    LoopCycle,
    OutboxEntry,
    TrainingSet,
    now_of,
)
from rag_loop.errors import BackendUnavailable, Conflict, InvalidInput, NotFound, RagLoopError
from rag_loop.index.versions import champion_or_none, protected_collections
from rag_loop.registry.tracking import INDEX_EXPERIMENT, TRAINING_EXPERIMENT, MlflowTracker

log = logging.getLogger(__name__)

MLFLOW_RUN = "mlflow_run"
MLFLOW_REGISTER = "mlflow_register"
MLFLOW_ALIAS = "mlflow_alias"
DROP_COLLECTION = "drop_collection"
KINDS = (MLFLOW_RUN, MLFLOW_REGISTER, MLFLOW_ALIAS, DROP_COLLECTION)
MLFLOW_KINDS = (MLFLOW_RUN, MLFLOW_REGISTER, MLFLOW_ALIAS)

OUTBOX_TAG = "rag_loop.outbox"
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)
CHAMPION_ALIAS = "champion"

#: rows an MLflow run's id is written back to (column `mlflow_run_id`, when still empty)
RECORD_TARGETS: dict[str, Any] = {
    "index_versions": IndexVersion,
    "eval_runs": EvalRun,
    "training_sets": TrainingSet,
    "loop_cycles": LoopCycle,
}


def _plain(value: Any) -> Any:
    """What a JSON column stores of `value` (paths and datetimes as text)."""
    return json.loads(json.dumps(value, default=str))


# -- writing: inside the caller's transaction --------------------------------------------------


def add(session: Session, kind: str, payload: dict[str, Any]) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown outbox kind {kind!r}")
    # the key names the entry's MLflow run: unique across databases that share one server
    payload = {**payload, "key": uuid.uuid4().hex}
    session.add(OutboxEntry(kind=kind, payload=_plain(payload), outcome={}))


def log_run(
    session: Session,
    experiment: str,
    run_name: str,
    *,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str] | None = None,
    artifacts: dict[str, Any] | None = None,
    artifact_files: dict[str, str] | None = None,
    status: str = "FINISHED",
    record: tuple[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
) -> None:
    """An MLflow run to create (and its id to write back to `record`: (table, row id)).
    `artifacts` are stored with the entry; `artifact_files` (name -> path of a file that
    does not change, e.g. a content-addressed training set) are read when it is applied, and
    so may a dataset's rows (`rows_from`: a JSON-lines file, `fields`: the columns kept; a
    line without one of them is not a row of the dataset, e.g. a training set's associated
    questions, which name a chunk and carry no passage)."""
    if record is not None and record[0] not in RECORD_TARGETS:
        raise ValueError(f"an MLflow run id cannot be recorded on {record[0]!r}")
    add(
        session,
        MLFLOW_RUN,
        {
            "experiment": experiment,
            "run_name": run_name,
            "params": params,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "tags": tags or {},
            "artifacts": artifacts or {},
            "artifact_files": artifact_files or {},
            "status": status,
            "record": list(record) if record else None,
            "dataset": dataset,
        },
    )


def log_index_version(
    session: Session,
    version_id: int,
    *,
    collection: str,
    embedder_name: str,
    embedder_version: str,
    params: dict[str, Any],
    metrics: dict[str, float],
) -> None:
    """An index version's MLflow run (experiment `index-versions`), its id written back."""
    log_run(
        session,
        INDEX_EXPERIMENT,
        f"index-v{version_id}",
        params={
            "index_version": version_id,
            "collection_name": collection,
            "embedder": embedder_name,
            "embedder_version": embedder_version,
            **params,
        },
        metrics=metrics,
        tags={"rag_loop.kind": "index_version", "rag_loop.index_version": str(version_id)},
        record=("index_versions", version_id),
    )


def register_embedder(
    session: Session,
    row: EmbedderVersion,
    *,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    folder: Path,
    description: str,
    dataset: dict[str, Any] | None = None,
    packaged: bool = False,
) -> None:
    """Log the embedder's run (with its training set as a dataset input) and register its
    folder as a new version of the registered model; the version is written back to `row`."""
    session.flush()
    add(
        session,
        MLFLOW_REGISTER,
        {
            "embedder_version_id": row.id,
            "run_name": run_name,
            "params": params,
            "metrics": metrics,
            "tags": tags,
            "folder": str(folder),
            "description": description,
            "dataset": dataset,
            "packaged": packaged,
        },
    )


def sync_champion_alias(session: Session, reason: str) -> None:
    """Point the registered model's `champion` alias at the embedder that serves (as SQL says
    when the entry is applied)."""
    add(session, MLFLOW_ALIAS, {"reason": reason})


def drop_collection(session: Session, collection: str, reason: str) -> None:
    """Drop a Chroma collection, unless it is protected when the drop is applied."""
    add(session, DROP_COLLECTION, {"collection": collection, "reason": reason})


# -- applying ----------------------------------------------------------------------------------


class _NotYet(RagLoopError):
    """An entry that waits for another one (the alias for its model's registration)."""


@dataclass
class FlushResult:
    applied: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    postponed: list[int] = field(default_factory=list)
    pending: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "failed": self.failed,
            "postponed": self.postponed,
            "pending": self.pending,
        }


class Outbox:
    """Applies outbox entries. Safe in several processes at once: an entry is claimed (its
    `next_attempt_at` pushed a lease ahead, compare-and-set) before it is applied."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        tracker: MlflowTracker,
        store: Any,
        *,
        model_name: str,
        lease_seconds: float = 120.0,
        retry_base_seconds: float = 5.0,
        retry_max_seconds: float = 300.0,
    ) -> None:
        self.sessions = sessions
        self.tracker = tracker
        self.store = store
        self.model_name = model_name
        self.lease = timedelta(seconds=lease_seconds)
        self.retry_base = retry_base_seconds
        self.retry_max = retry_max_seconds
        self._apply: dict[str, Callable[[int, dict[str, Any]], dict[str, Any]]] = {
            MLFLOW_RUN: self._mlflow_run,
            MLFLOW_REGISTER: self._mlflow_register,
            MLFLOW_ALIAS: self._mlflow_alias,
            DROP_COLLECTION: self._drop_collection,
        }

    def flush(self, *, limit: int = 200, now_too: bool = False) -> FlushResult:
        """Apply the due entries, oldest first (`now_too`: every pending one, whatever its
        backoff says: an operator's `outbox flush`)."""
        result = FlushResult()
        now = now_of(self.sessions)
        with self.sessions() as session:
            query = select(OutboxEntry.id, OutboxEntry.kind).where(OutboxEntry.done_at.is_(None))
            if not now_too:
                query = query.where(OutboxEntry.next_attempt_at <= now)
            due = list(session.execute(query.order_by(OutboxEntry.id).limit(limit)))
        mlflow_down = False
        for entry_id, kind in due:
            if mlflow_down and kind in MLFLOW_KINDS:
                result.postponed.append(entry_id)
                continue
            payload = self._claim(entry_id, now_too=now_too)
            if payload is None:
                continue  # another process has it, or it is done
            try:
                outcome = self._apply[kind](entry_id, payload)
            except Exception as exc:
                message = (
                    exc.message if isinstance(exc, RagLoopError) else f"{type(exc).__name__}: {exc}"
                )
                self._failed(entry_id, message)
                result.failed.append(entry_id)
                if kind in MLFLOW_KINDS and isinstance(exc, BackendUnavailable):
                    # MLflow did not answer: the other MLflow entries wait for the next
                    # flush. An entry that fails on its own (e.g. its file is gone) holds
                    # up none of them.
                    mlflow_down = True
                log.warning("outbox entry %s (%s) not applied yet: %s", entry_id, kind, message)
                continue
            self._done(entry_id, outcome)
            result.applied.append(entry_id)
        result.pending = self.backlog()["pending"]
        return result

    def flush_quietly(self) -> None:
        """`flush`, for code that just committed a change: never raises."""
        try:
            self.flush()
        except Exception:  # the database itself is down: the schedule tries again
            log.warning("the outbox could not be flushed now", exc_info=True)

    def backlog(self) -> dict[str, Any]:
        with self.sessions() as session:
            pending, oldest, failing = session.execute(
                select(
                    func.count(OutboxEntry.id),
                    func.min(OutboxEntry.created_at),
                    func.count(OutboxEntry.last_error),
                ).where(OutboxEntry.done_at.is_(None))
            ).one()
            last = session.scalar(
                select(OutboxEntry)
                .where(OutboxEntry.done_at.is_(None), OutboxEntry.last_error.is_not(None))
                .order_by(OutboxEntry.id)
                .limit(1)
            )
            return {
                "pending": int(pending or 0),
                "failing": int(failing or 0),
                "oldest_at": oldest.isoformat() if oldest else None,
                "last_error": last.last_error if last else None,
            }

    def entries(self, *, status: str = "pending", limit: int = 50) -> list[dict[str, Any]]:
        if status not in ("pending", "done", "all"):
            raise InvalidInput("status must be pending, done or all")
        with self.sessions() as session:
            query = select(OutboxEntry).order_by(OutboxEntry.id.desc()).limit(limit)
            if status == "pending":
                query = query.where(OutboxEntry.done_at.is_(None))
            elif status == "done":
                query = query.where(OutboxEntry.done_at.is_not(None))
            return [view(e) for e in session.scalars(query)]

    def discard(self, entry_id: int, *, actor: str, reason: str) -> dict[str, Any]:
        """An operator's way out of an entry that can never be applied (its model folder
        deleted, a payload MLflow keeps refusing): it is marked done without its effect,
        with who and why in its outcome and in the audit log, and leaves the backlog. SQL
        is untouched; what the entry would have told MLflow or Chroma is not told (a
        discarded drop leaves its collection in Chroma; the next alias entry sets the
        `champion` alias anew; while an embedder whose registration was discarded serves,
        alias entries leave the alias as it is)."""
        if not reason:
            raise InvalidInput(
                "say why the entry is discarded (--reason): it goes to the audit log"
            )
        with transaction(self.sessions) as session:
            entry = session.get(OutboxEntry, entry_id)
            if entry is None:
                raise NotFound(f"no outbox entry {entry_id}")
            if entry.done_at is not None:
                raise Conflict(
                    f"outbox entry {entry_id} is done already ({entry.done_at.isoformat()})"
                )
            entry.done_at = now_of(session)
            entry.outcome = {"discarded": {"by": actor, "reason": reason}}
            session.add(
                AuditEntry(
                    actor=actor,
                    action="outbox.discard",
                    target=f"outbox_entry:{entry_id}",
                    details={
                        "kind": entry.kind,
                        "attempts": entry.attempts,
                        "last_error": entry.last_error,
                        "reason": reason,
                    },
                )
            )
            session.flush()
            return view(entry)

    # -- bookkeeping

    def _claim(self, entry_id: int, *, now_too: bool) -> dict[str, Any] | None:
        now = now_of(self.sessions)
        with transaction(self.sessions) as session:
            # the lease is `next_attempt_at`: due once it passed, pushed ahead while applied.
            # An operator's flush takes every pending entry, however far its backoff (or a
            # lease) put it: applying an entry twice does what applying it once does.
            taken = leases.take(
                session,
                OutboxEntry.next_attempt_at,
                OutboxEntry.id == entry_id,
                OutboxEntry.done_at.is_(None),
                stale_before=FOREVER if now_too else now + timedelta(microseconds=1),
                stamp=now + self.lease,
            )
            if not taken:
                return None
            return dict(session.get_one(OutboxEntry, entry_id).payload)

    def _done(self, entry_id: int, outcome: dict[str, Any]) -> None:
        with transaction(self.sessions) as session:
            entry = session.get_one(OutboxEntry, entry_id)
            entry.done_at = now_of(session)
            entry.attempts += 1
            entry.outcome = _plain(outcome)
            entry.last_error = None

    def _failed(self, entry_id: int, message: str) -> None:
        with transaction(self.sessions) as session:
            entry = session.get_one(OutboxEntry, entry_id)
            entry.attempts += 1
            wait = min(self.retry_base * 2 ** (entry.attempts - 1), self.retry_max)
            entry.next_attempt_at = now_of(session) + timedelta(seconds=wait)
            entry.last_error = message[:4000]

    # -- the effects

    def _find_or_log(self, entry_id: int, experiment: str, p: dict[str, Any]) -> str | None:
        key = p.get("key", str(entry_id))
        run_id = self.tracker.find_run(experiment, OUTBOX_TAG, key)
        if run_id is None:
            artifacts = dict(p.get("artifacts") or {})
            for name, path in (p.get("artifact_files") or {}).items():
                artifacts[name] = Path(path).read_text(encoding="utf-8")
            run_id = self.tracker.log_run(
                experiment,
                p["run_name"],
                params=p["params"],
                metrics=p["metrics"],
                tags={**p["tags"], OUTBOX_TAG: key},
                artifacts=artifacts,
                status=p.get("status", "FINISHED"),
            )
        dataset = dict(p.get("dataset") or {})
        if (
            run_id is not None
            and dataset
            and not self.tracker.has_dataset(run_id, dataset["digest"])
        ):
            if "rows_from" in dataset:
                fields = dataset.pop("fields")
                lines = Path(dataset.pop("rows_from")).read_text(encoding="utf-8").splitlines()
                rows = [json.loads(line) for line in lines if line.strip()]
                dataset["rows"] = [
                    {k: row[k] for k in fields} for row in rows if all(k in row for k in fields)
                ]
            self.tracker.log_dataset(run_id, **dataset)
        return run_id

    def _mlflow_run(self, entry_id: int, p: dict[str, Any]) -> dict[str, Any]:
        if not self.tracker.enabled:
            return {"skipped": "MLflow is disabled"}
        run_id = self._find_or_log(entry_id, p["experiment"], p)
        if p.get("record") and run_id is not None:
            table, row_id = p["record"]
            model = RECORD_TARGETS[table]
            query = update(model).where(model.id == row_id)
            if table != "loop_cycles":  # a cycle's run of its latest settled state wins
                query = query.where(model.mlflow_run_id.is_(None))
            with transaction(self.sessions) as session:
                session.execute(query.values(mlflow_run_id=run_id))
        return {"run_id": run_id}

    def _mlflow_register(self, entry_id: int, p: dict[str, Any]) -> dict[str, Any]:
        if not self.tracker.enabled:
            return {"skipped": "MLflow is disabled"}
        with self.sessions() as session:
            row = session.get(EmbedderVersion, p["embedder_version_id"])
            if row is None:
                return {"skipped": "the embedder version is gone"}
            if row.mlflow_model_version:
                return {"model_version": row.mlflow_model_version, "already": True}
        run_id = self._find_or_log(entry_id, TRAINING_EXPERIMENT, p)
        assert run_id is not None
        version = self.tracker.model_version_of_run(self.model_name, run_id)
        if version is None:
            version = self.tracker.register_model(
                self.model_name,
                Path(p["folder"]),
                run_id=run_id,
                tags=p["tags"],
                description=p["description"],
                packaged=bool(p.get("packaged")),
            )
        with transaction(self.sessions) as session:
            row = session.get_one(EmbedderVersion, p["embedder_version_id"])
            row.mlflow_run_id = row.mlflow_run_id or run_id
            row.mlflow_model_name = self.model_name
            row.mlflow_model_version = version
        return {"run_id": run_id, "model_version": version}

    def _mlflow_alias(self, entry_id: int, p: dict[str, Any]) -> dict[str, Any]:
        if not self.tracker.enabled:
            return {"skipped": "MLflow is disabled"}
        with self.sessions() as session:
            serving = champion_or_none(session)
            if serving is None:
                return {"skipped": "nothing serves"}
            row = session.scalar(
                select(EmbedderVersion).where(EmbedderVersion.version == serving.embedder_version)
            )
            index_id = serving.id
            registering = row is not None and any(
                entry.payload.get("embedder_version_id") == row.id
                for entry in session.scalars(
                    select(OutboxEntry).where(
                        OutboxEntry.kind == MLFLOW_REGISTER, OutboxEntry.done_at.is_(None)
                    )
                )
            )
        if row is None or (not row.mlflow_model_version and not registering):
            # its registration was discarded (`discard`): no version to point the alias at
            return {"skipped": f"the serving embedder {serving.embedder_version} is not registered"}
        if not row.mlflow_model_version:
            raise _NotYet(
                f"the serving embedder {serving.embedder_version} is not registered in MLflow "
                "yet (its registration is in the outbox)"
            )
        current = self.tracker.model_alias(self.model_name, CHAMPION_ALIAS)
        if current != row.mlflow_model_version:
            self.tracker.set_model_alias(self.model_name, CHAMPION_ALIAS, row.mlflow_model_version)
        return {
            "alias": CHAMPION_ALIAS,
            "model_version": row.mlflow_model_version,
            "index_version": index_id,
            "moved": current != row.mlflow_model_version,
        }

    def _drop_collection(self, entry_id: int, p: dict[str, Any]) -> dict[str, Any]:
        collection = p["collection"]
        with self.sessions() as session:
            protected = protected_collections(session)
        if collection in protected:
            return {
                "kept": collection,
                "why": f"it is the {protected[collection]} index; such an index is never dropped",
            }
        try:
            exists = self.store.exists(collection)
            if exists:
                self.store.drop(collection)
        except RagLoopError:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"cannot reach Chroma to drop {collection}: {exc}") from exc
        return {"dropped": collection} if exists else {"gone": collection}


def view(entry: OutboxEntry) -> dict[str, Any]:
    summary = {
        key: entry.payload[key]
        for key in ("experiment", "run_name", "collection", "reason", "embedder_version_id")
        if key in entry.payload
    }
    return {
        "id": entry.id,
        "kind": entry.kind,
        "created_at": entry.created_at.isoformat(),
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at.isoformat(),
        "last_error": entry.last_error,
        "done_at": entry.done_at.isoformat() if entry.done_at else None,
        "outcome": entry.outcome,
        "summary": summary,
    }
