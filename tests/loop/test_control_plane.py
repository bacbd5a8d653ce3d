"""The control plane's invariants under faults: a real `mlflow server` process stopped and
started again at the gate, at promotion, at rollback and at reject; and every operator
action from every state, refused with a 409 that changes nothing where the state does not
allow it.

- SQL decides what serves; MLflow (the `champion` alias, runs, registered versions)
  follows through the outbox and catches up once the server is back.
- The serving index's and the rollback target's collections are never dropped; the
  rollback target is never the champion.
- A cycle whose candidate serves is `promoted`, whatever happens to MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from rag_loop.corpus.ingest import ingest
from rag_loop.db.engine import transaction
from rag_loop.db.models import Alias, AuditEntry, IndexVersion, LoopCycle, OutboxEntry
from rag_loop.errors import Conflict
from rag_loop.interactions.ask import ask
from rag_loop.loop import cycle
from rag_loop.loop.states import ACTIONS, Action, CycleState
from rag_loop.registry.embedders import model_name
from rag_loop.services import Services
from tests.conftest import CORPUS
from tests.loop.conftest import GOLDEN_SHARE, questions, replay
from tests.servers import Process, mlflow_server

ALWAYS_PASS = {
    "min_improvement": -1.0,
    "max_regression": 1.0,
    "min_gate_queries": 1,
    "max_p_value": 1.0,
}


class MlflowServer:
    """A real tracking server that a test can stop and start again on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backend = f"sqlite:///{root / 'mlflow-server.db'}"
        self.artifacts = root / "mlartifacts"
        self.starts = 0
        self.process: Process | None = None
        self.port: int | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        logs = self.root / f"logs-{self.starts}"
        logs.mkdir(parents=True)
        self.process, url = mlflow_server(self.backend, self.artifacts, logs, port=self.port)
        self.port = int(url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture
def mlflow(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path / "mlflow")
    yield server
    server.stop()


def _aliases(services: Services) -> dict[str, int]:
    with services.sessions() as session:
        return {a.name: a.index_version_id for a in session.scalars(select(Alias))}


def _pending(services: Services) -> list[str]:
    with services.sessions() as session:
        return list(
            session.scalars(
                select(OutboxEntry.kind)
                .where(OutboxEntry.done_at.is_(None))
                .order_by(OutboxEntry.id)
            )
        )


def _registered(services: Services, embedder_version: str) -> str:
    from rag_loop.registry.embedders import embedder_row

    row = embedder_row(services, embedder_version)
    assert row is not None and row.mlflow_model_version, embedder_version
    return row.mlflow_model_version


def _snapshot(services: Services) -> dict[str, Any]:
    """Everything an operator action may change."""
    with services.sessions() as session:
        cycles = [
            (c.id, c.state, c.error, c.decided_by, c.champion_index_version_id)
            for c in session.scalars(select(LoopCycle).order_by(LoopCycle.id))
        ]
        return {
            "cycles": cycles,
            "aliases": _aliases(services),
            "audit": session.scalar(select(func.count()).select_from(AuditEntry)),
            "outbox": session.scalar(select(func.count()).select_from(OutboxEntry)),
            "statuses": [v.status for v in session.scalars(select(IndexVersion))],
            "collections": sorted(c.name for c in services.store.client.list_collections()),
        }


@pytest.mark.slow
def test_mlflow_down_at_the_gate_and_at_promotion_then_rollback_and_catch_up(
    with_feedback: Callable[..., Services], mlflow: MlflowServer
) -> None:
    services = with_feedback(loop=ALWAYS_PASS, mlflow={"tracking_uri": mlflow.url})
    name = model_name(services)
    base = _registered(services, services.embedder.version)
    assert services.tracker.model_alias(name, "champion") == base  # from the first version on
    assert _pending(services) == []

    mlflow.stop()  # the tracking server goes away before the cycle trains and gates
    view = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert view["state"] == "promoted", view["error"]
    old, new = view["champion_index_version_id"], view["candidate_index_version_id"]
    assert _aliases(services) == {"champion": new, "previous_champion": old}
    answer = ask(services, "How do I report a stolen bike?")
    assert answer.versions["index_version"] == new  # SQL decided: the candidate serves
    pending = _pending(services)
    assert "mlflow_register" in pending and pending[-2:] == ["mlflow_alias", "mlflow_run"]
    backlog = services.outbox.backlog()
    assert backlog["pending"] == len(pending) and backlog["failing"] >= 1
    assert view["embedder"]["mlflow_model"] is None  # not registered yet, and says so

    # operator actions that the state refuses change nothing, MLflow or not
    before = _snapshot(services)
    for refused in (
        lambda: cycle.resume(services, view["id"]),
        lambda: cycle.reject(services, view["id"], actor="test"),
        lambda: cycle.approve(services, view["id"], actor="test"),
    ):
        with pytest.raises(Conflict):
            refused()
    assert _snapshot(services) == before

    # rollback while MLflow is still down: the old index serves at once
    rolled = cycle.rollback(services, actor="test", reason="fault test")
    assert rolled["state"] == "rolled_back"
    assert _aliases(services)["champion"] == old
    assert "previous_champion" not in _aliases(services)  # never the champion itself
    assert ask(services, "How do I report a stolen bike?").versions["index_version"] == old
    with pytest.raises(Conflict):
        cycle.rollback(services, actor="test")  # nothing promoted is left to roll back
    with services.sessions() as session:
        for version in (old, new):  # neither collection was dropped
            assert services.store.exists(session.get_one(IndexVersion, version).collection_name)

    # MLflow returns: the registry catches up with what SQL says, in order
    mlflow.start()
    flushed = services.outbox.flush(now_too=True)
    assert flushed.failed == [] and flushed.pending == 0
    trained = _registered(services, view["embedder"]["version"])
    assert trained != base
    assert services.tracker.model_alias(name, "champion") == base  # the old index serves
    with services.sessions() as session:
        row = session.get_one(LoopCycle, view["id"])
        assert row.mlflow_run_id is not None
        assert session.get_one(IndexVersion, new).mlflow_run_id is not None
    assert services.outbox.flush(now_too=True).applied == []  # applied once


@pytest.mark.slow
def test_mlflow_down_at_approval_and_at_reject(
    with_feedback: Callable[..., Services], mlflow: MlflowServer
) -> None:
    services = with_feedback(
        loop={**ALWAYS_PASS, "require_approval": True}, mlflow={"tracking_uri": mlflow.url}
    )
    name = model_name(services)
    held = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert held["state"] == "awaiting_approval"
    trained = _registered(services, held["embedder"]["version"])

    mlflow.stop()  # down at promotion: the approval promotes all the same
    approved = cycle.approve(services, held["id"], actor="reviewer")
    assert approved["state"] == "promoted" and approved["error"] is None
    assert _aliases(services)["champion"] == held["candidate_index_version_id"]
    assert "mlflow_alias" in _pending(services)
    mlflow.start()
    assert services.outbox.flush(now_too=True).pending == 0
    assert services.tracker.model_alias(name, "champion") == trained

    # a second cycle, rejected by a person while MLflow is down
    replay(services, questions()[GOLDEN_SHARE:], seed=1)
    second = cycle.run_cycle(services, cycle.start_cycle(services, actor="test"), actor="test")
    assert second["state"] == "awaiting_approval"
    mlflow.stop()
    rejected = cycle.reject(services, second["id"], actor="reviewer", reason="not now")
    assert rejected["state"] == "rejected"
    with services.sessions() as session:
        candidate = session.get_one(IndexVersion, second["candidate_index_version_id"])
        serving = session.get_one(IndexVersion, held["candidate_index_version_id"])
        target = session.get_one(IndexVersion, held["champion_index_version_id"])
        assert candidate.status == "rejected"
        assert not services.store.exists(candidate.collection_name)  # Chroma is up: dropped
        assert services.store.exists(serving.collection_name)
        assert services.store.exists(target.collection_name)
    assert _aliases(services)["champion"] == held["candidate_index_version_id"]
    assert _pending(services) == ["mlflow_run"]  # the cycle's run waits for MLflow
    mlflow.start()
    assert services.outbox.flush(now_too=True).pending == 0
    assert services.tracker.model_alias(name, "champion") == trained


def test_a_failed_cycle_whose_candidate_serves_is_reconciled_never_rejected(
    loop_services: Callable[..., Services],
) -> None:
    """The state an older version left after an MLflow outage at promotion: the candidate
    serves, the cycle says failed. Reject refuses (it would drop the serving index), resume
    records the promotion, rollback then goes back to the real old index."""
    services = loop_services()
    ingest(services, CORPUS, actor="test")
    first = _index_id(services)
    second = _new_version(services, first)
    with transaction(services.sessions) as session:
        session.execute(
            update(Alias).where(Alias.name == "champion").values(index_version_id=second)
        )
        session.add(
            LoopCycle(
                state=CycleState.FAILED,
                trigger="manual",
                trigger_details={},
                champion_index_version_id=first,
                candidate_index_version_id=second,
                stages={},
                failed_in="evaluating",
                error="evaluating: cannot move the MLflow alias champion",
                gate={},
            )
        )
    before = _snapshot(services)
    with pytest.raises(Conflict, match="serves"):
        cycle.reject(services, 1, actor="test")
    assert _snapshot(services) == before

    view = cycle.resume(services, 1, actor="operator")
    assert view["state"] == "promoted" and view["error"] is None
    assert _aliases(services) == {"champion": second, "previous_champion": first}
    rolled = cycle.rollback(services, actor="operator")
    assert rolled["state"] == "rolled_back"
    assert _aliases(services) == {"champion": first}
    with services.sessions() as session:
        audit = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "loop.rollback")
        ).one()
    assert audit.details["from_index"] == second and audit.details["to_index"] == first


def _index_id(services: Services) -> int:
    with services.sessions() as session:
        return int(session.scalar(select(func.max(IndexVersion.id))) or 0)


def _new_version(services: Services, parent_id: int) -> int:
    """A second ready index version of the same corpus (as a loop cycle's candidate is)."""
    from rag_loop.corpus.build import build_index, create_index_version

    with services.sessions() as session:
        parent = session.get_one(IndexVersion, parent_id)
        session.expunge(parent)
    version, _ = create_index_version(services, services.embedder, parent, "test candidate")
    build_index(services, version, services.embedder, reuse_from=parent.collection_name)
    return version


# every action from every state -------------------------------------------------------------


def _cycle_in(services: Services, state: CycleState, first: int, second: int) -> int:
    """A cycle row in `state`, as the loop leaves it there (candidate index built)."""
    serving = second if state in (CycleState.PROMOTED,) else first
    with transaction(services.sessions) as session:
        session.execute(
            update(Alias).where(Alias.name == "champion").values(index_version_id=serving)
        )
        if state == CycleState.PROMOTED:
            session.add(Alias(name="previous_champion", index_version_id=first))
        row = LoopCycle(
            state=state,
            trigger="manual",
            trigger_details={},
            champion_index_version_id=first,
            candidate_index_version_id=second,
            stages={},
            failed_in="evaluating" if state == CycleState.FAILED else None,
            gate={},
        )
        session.add(row)
        session.flush()
        return row.id


ACT: dict[Action, Callable[[Services, int], Any]] = {
    Action.RESUME: lambda s, i: cycle.resume(s, i, actor="test"),
    Action.APPROVE: lambda s, i: cycle.approve(s, i, actor="test"),
    Action.REJECT: lambda s, i: cycle.reject(s, i, actor="test"),
    Action.ROLLBACK: lambda s, i: cycle.rollback(s, actor="test", cycle_id=i),
}


@pytest.mark.parametrize("state", list(CycleState), ids=str)
def test_every_action_from_every_state(
    loop_services: Callable[..., Services], state: CycleState
) -> None:
    """Where the state machine refuses an action: a 409 and no change at all. Where it
    allows one (and it needs no training): the right end state, the invariants kept."""
    services = loop_services()
    ingest(services, CORPUS, actor="test")
    first = _index_id(services)
    second = _new_version(services, first)
    cycle_id = _cycle_in(services, state, first, second)
    for action, act in ACT.items():
        before = _snapshot(services)
        if state not in ACTIONS[action]:
            with pytest.raises(Conflict):
                act(services, cycle_id)
            assert _snapshot(services) == before, (state, action)
    # the allowed actions that end a cycle without training or evaluating
    if state in ACTIONS[Action.REJECT]:
        assert cycle.reject(services, cycle_id, actor="test")["state"] == "rejected"
        assert _aliases(services)["champion"] == first  # the champion kept serving
        with services.sessions() as session:
            candidate = session.get_one(IndexVersion, second)
            assert candidate.status == "rejected"
            assert not services.store.exists(candidate.collection_name)
            assert services.store.exists(session.get_one(IndexVersion, first).collection_name)
    if state == CycleState.PROMOTED:
        assert cycle.rollback(services, actor="test", cycle_id=cycle_id)["state"] == "rolled_back"
        assert _aliases(services) == {"champion": first}
        with services.sessions() as session:
            assert services.store.exists(session.get_one(IndexVersion, second).collection_name)


def test_a_drop_in_the_outbox_never_takes_a_protected_collection(
    loop_services: Callable[..., Services],
) -> None:
    """Checked again when the drop is applied: an entry written for a collection that
    serves (or is the rollback target) by then keeps it."""
    from rag_loop.registry import outbox

    services = loop_services()
    ingest(services, CORPUS, actor="test")
    first = _index_id(services)
    second = _new_version(services, first)
    cycle.serve_version(services, second, actor="test", reason="test")
    assert _aliases(services) == {"champion": second, "previous_champion": first}
    with services.sessions() as session:
        names = {v.id: v.collection_name for v in session.scalars(select(IndexVersion))}
    with transaction(services.sessions) as session:
        outbox.drop_collection(session, names[first], "test: the rollback target")
        outbox.drop_collection(session, names[second], "test: the serving index")
    flushed = services.outbox.flush(now_too=True)
    assert len(flushed.applied) == 2 and flushed.pending == 0
    assert all(services.store.exists(name) for name in names.values())
    entries = services.outbox.entries(status="done", limit=2)
    assert all("never dropped" in e["outcome"]["why"] for e in entries)


def test_serve_version_is_the_way_back_even_when_chroma_lost_the_collection(
    loop_services: Callable[..., Services],
) -> None:
    services = loop_services()
    ingest(services, CORPUS, actor="test")
    first = _index_id(services)
    second = _new_version(services, first)
    with services.sessions() as session:
        lost = session.get_one(IndexVersion, second).collection_name
    services.store.drop(lost)  # Chroma lost it (a wiped volume, say)
    served = cycle.serve_version(services, second, actor="operator", reason="recover")
    assert served == {"index_version": second, "previous": first, "collection_rebuilt": True}
    assert services.store.exists(lost)
    assert ask(services, "How do I report a stolen bike?").versions["index_version"] == second
    with pytest.raises(Conflict, match="serves already"):
        cycle.serve_version(services, second, actor="operator")
    with transaction(services.sessions) as session:
        session.get_one(IndexVersion, first).status = "rejected"
    before = _snapshot(services)
    with pytest.raises(Conflict, match="only a ready version serves"):
        cycle.serve_version(services, first, actor="operator")
    assert _snapshot(services) == before
