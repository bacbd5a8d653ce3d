"""Peak resident memory of a stretch of work, sampled (ru_maxrss only ever grows, so it
cannot tell the peak of a later stage from an earlier one)."""

from __future__ import annotations

import os
import resource
import threading
from types import TracebackType


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process-wide peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.mb`: the highest RSS seen, sampled every
    `interval` seconds by a daemon thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.mb = max(self.mb, rss_mb())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        self.mb = rss_mb()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, rss_mb())
