"""What time it is, for the service's records and every rule that reads them.

Every timestamp the service writes (a row's `created_at`, a cycle's feedback snapshot, a
lease's heartbeat, the rollback watch's start) and every "now" a rule compares them with
comes from one `Clock`, given to `Services` and carried by its database engine (as the
execution option `CLOCK_OPTION`), so a column default and the code that stamps a row by
hand read the same clock. `SystemClock` is the default. `SimulatedClock` is for replays:
the timeline benchmark runs thirty days of traffic through the real service in minutes by
moving it forward.

Not on the clock: durations measured for reports (`time.perf_counter`), expiry of signed
tokens and console sessions (wall time on both sides), and the ordering bits of ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

CLOCK_OPTION = "rag_loop_clock"


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulatedClock:
    """A clock that stands still until it is moved, or moves with wall time while work
    runs (`running`); thread-safe, never goes back."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a simulated clock starts at a timezone-aware time")
        self._now = start.astimezone(UTC)
        self._since: float | None = None  # wall time `running` began, while it runs
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._current()

    def _current(self) -> datetime:
        if self._since is None:
            return self._now
        return self._now + timedelta(seconds=time.monotonic() - self._since)

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a clock does not go back")
        with self._lock:
            if self._since is not None:
                raise ValueError("the clock is running with wall time")
            self._now += delta
            return self._now

    def advance_to(self, moment: datetime) -> datetime:
        return self.advance(max(moment - self.now(), timedelta(0)))

    @contextmanager
    def running(self) -> Iterator[None]:
        """While inside, the clock moves with wall time: work that takes real minutes (a
        loop cycle, an ingest) takes them on the simulated clock too, and what it stamps on
        the way shows it. Afterwards the clock stands where it got to."""
        with self._lock:
            if self._since is not None:
                raise ValueError("the clock is already running with wall time")
            self._since = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._now, self._since = self._current(), None


SYSTEM_CLOCK = SystemClock()


def clock_of(options: dict[str, Any] | Any) -> Clock:
    """The clock carried in execution options (an engine's, a connection's, a statement
    context's `execution_options`); the system clock when none is."""
    clock = options.get(CLOCK_OPTION) if options is not None else None
    return clock if clock is not None else SYSTEM_CLOCK
