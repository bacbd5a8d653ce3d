"""The loop cycle's states, the moves between them and what an operator may do in each,
declared once. The controller (`loop.cycle`), the API, the CLI, jobs and the scheduler all
ask this module; nothing else spells a state as a string.

    collecting -> training -> indexing -> evaluating -> [shadow] -> [awaiting_approval]
      -> promoted (-> rolled_back) | rejected
    any working step -> failed -> (resume) the step it failed in | rejected

The control plane's invariants (what SQL guarantees whatever other systems do):

- a cycle whose candidate serves is `promoted`: the promotion is one SQL transaction that
  moves the `champion` alias and the state together; MLflow follows later (the outbox);
- the rollback target (`previous_champion`, a promoted cycle's old champion) is never the
  champion, and neither it nor the serving index is ever dropped (`index.versions`
  `protected_collections`, checked again when the outbox applies a drop);
- an action refused here is a 409 (`Conflict`) that changed nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from rag_loop.errors import Conflict


class CycleState(StrEnum):
    COLLECTING = "collecting"
    TRAINING = "training"
    INDEXING = "indexing"
    EVALUATING = "evaluating"
    SHADOW = "shadow"
    AWAITING_APPROVAL = "awaiting_approval"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


S = CycleState

#: the steps a worker runs, in order (each one resumable)
WORKING: tuple[CycleState, ...] = (S.COLLECTING, S.TRAINING, S.INDEXING, S.EVALUATING, S.SHADOW)
#: a cycle in one of these blocks a new one
ACTIVE: tuple[CycleState, ...] = (*WORKING, S.AWAITING_APPROVAL)
#: nothing runs a cycle in these any more
SETTLED: tuple[CycleState, ...] = (S.AWAITING_APPROVAL, S.PROMOTED, S.REJECTED, S.ROLLED_BACK)
TERMINAL: tuple[CycleState, ...] = (S.PROMOTED, S.REJECTED, S.ROLLED_BACK, S.FAILED)

#: every allowed move; anything else is a bug or a race, refused with a 409
TRANSITIONS: dict[CycleState, frozenset[CycleState]] = {
    S.COLLECTING: frozenset({S.TRAINING, S.REJECTED, S.FAILED}),
    S.TRAINING: frozenset({S.INDEXING, S.REJECTED, S.FAILED}),
    S.INDEXING: frozenset({S.EVALUATING, S.REJECTED, S.FAILED}),
    S.EVALUATING: frozenset({S.SHADOW, S.AWAITING_APPROVAL, S.PROMOTED, S.REJECTED, S.FAILED}),
    S.SHADOW: frozenset({S.AWAITING_APPROVAL, S.PROMOTED, S.REJECTED, S.FAILED}),
    S.AWAITING_APPROVAL: frozenset({S.PROMOTED, S.REJECTED}),
    # failed -> promoted only records a promotion that committed already: a cycle whose
    # candidate serves (as older versions could leave one after an MLflow outage)
    S.FAILED: frozenset({*WORKING, S.REJECTED, S.PROMOTED}),
    S.PROMOTED: frozenset({S.ROLLED_BACK}),
    S.REJECTED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}


class Action(StrEnum):
    """What a person (API, CLI, console) or the loop itself may ask of a cycle."""

    RUN = "run"
    RESUME = "resume"
    APPROVE = "approve"
    REJECT = "reject"
    ROLLBACK = "rollback"


#: the states each action starts from
ACTIONS: dict[Action, frozenset[CycleState]] = {
    Action.RUN: frozenset(WORKING),
    Action.RESUME: frozenset({*WORKING, S.FAILED}),
    Action.APPROVE: frozenset({S.AWAITING_APPROVAL}),
    Action.REJECT: frozenset({*ACTIVE, S.FAILED}),
    Action.ROLLBACK: frozenset({S.PROMOTED}),
}

_WHY = {
    Action.RUN: "there is nothing to run",
    Action.RESUME: "there is nothing to resume",
    Action.APPROVE: "not awaiting approval",
    Action.REJECT: "it cannot be rejected",
    Action.ROLLBACK: "only a promoted cycle rolls back",
}


def state_of(value: str) -> CycleState:
    return CycleState(value)


def allows(action: Action, state: str) -> bool:
    return CycleState(state) in ACTIONS[action]


def check_action(action: Action, cycle_id: int, state: str) -> None:
    """Refuse (409) an action the cycle's state does not allow."""
    if not allows(action, state):
        raise Conflict(
            f"loop cycle {cycle_id} is {state}; {_WHY[action]}",
            details=[{"cycle": cycle_id, "state": state, "action": str(action)}],
        )


def check_move(cycle_id: int, current: str, target: str) -> CycleState:
    """Refuse (409) a move the table does not declare; returns the target state."""
    to = CycleState(target)
    if to not in TRANSITIONS[CycleState(current)]:
        raise Conflict(
            f"loop cycle {cycle_id} is {current}; it cannot become {to}",
            details=[{"cycle": cycle_id, "state": current, "to": str(to)}],
        )
    return to


def values(states: Iterable[CycleState]) -> list[str]:
    return [str(s) for s in states]
